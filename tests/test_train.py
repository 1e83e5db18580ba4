"""The trainer (xlm/train.py): it learns, its checkpoints load in transformers, a killed run resumes bit for bit,
a killed save keeps the previous checkpoint, two processes equal one, bad input is one line.

Models are scaled-down presets (2 layers, 64-d, 512 pieces, the synthetic character-level tokenizer); corpora
are a few hundred random sentences over a small vocabulary, prepared with `xlm.data.prepare`. Runs compared bit for
bit are subprocesses with one thread each: the thread count changes how PyTorch blocks its sums.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import scaled_down
from safetensors.torch import load_file

from xlm import data
from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.synthetic import import_transformers, save_synthetic_checkpoint
from xlm.tokenizer import Tokenizer
from xlm.train import OptimizerOptions, TrainConfig, find_checkpoint, learning_rate, main, train

ROOT = Path(__file__).resolve().parents[1]
EN = "the cat is black and a dog runs over green fields while it rains on the old town".split()
FR = "le chat est noir et un chien court sur les champs verts pendant qu'il pleut sur la ville".split()


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A scaled-down xlm-clm-enfr-1024 with its tokenizer (languages en = 0, fr = 1)."""
    config = scaled_down(PRESETS["xlm-clm-enfr-1024"])
    return save_synthetic_checkpoint(config, tmp_path_factory.mktemp("model") / "xlm-clm-enfr-1024")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny) -> Path:
    """train and valid splits: en, fr, and en-fr pairs (the same lines, word for word translations not needed)."""
    root = tmp_path_factory.mktemp("corpus")
    tokenizer = Tokenizer.from_pretrained(tiny, preset="original")
    for split, n, seed in (("train", 120, 0), ("valid", 12, 1)):
        for lang, words in (("en", EN), ("fr", FR)):
            (root / f"{split}.{lang}").write_text("\n".join(sentences(words, n, seed)) + "\n", encoding="utf-8")
        files = {lang: root / f"{split}.{lang}" for lang in ("en", "fr")}
        data.prepare(root / "data", tokenizer, mono=files, para={("en", "fr"): (files["en"], files["fr"])}, split=split)
    return root / "data"


def cli(args: list[str], launcher: tuple[str, ...] = (), script: str | None = None) -> subprocess.CompletedProcess:
    """`xlm train ARGS` in a fresh process with one thread (or `script` given ARGS as its sys.argv[1:])."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    program = ["-c", script, *args] if script else [*launcher, "-m", "xlm", "train", *args]
    return subprocess.run(
        [sys.executable, *program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )  # fmt: skip


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


# --- The schedule and the options -----------------------------------------------------------------------------


def test_inverse_sqrt_schedule_is_the_originals():
    """AdamInverseSqrtWithWarmup: linear from warmup_init_lr to lr over warmup_updates, then lr*sqrt(w/n)."""
    options = OptimizerOptions.parse("adam_inverse_sqrt,lr=0.0004,warmup_updates=100,warmup_init_lr=1e-7")
    assert learning_rate(options, 0) == 1e-7
    assert learning_rate(options, 50) == pytest.approx(1e-7 + 50 * (4e-4 - 1e-7) / 100, rel=1e-12)
    assert learning_rate(options, 100) == pytest.approx(4e-4, rel=1e-12)
    assert learning_rate(options, 400) == pytest.approx(2e-4, rel=1e-12)  # sqrt(100 / 400) = 1/2
    assert learning_rate(options, 10_000) == pytest.approx(4e-5, rel=1e-12)
    assert learning_rate(OptimizerOptions.parse("adam,lr=0.001"), 12345) == 0.001


@pytest.mark.parametrize(
    "text", ["sgd,lr=0.1", "adam,warmup_updates=10", "adam,lr=abc", "adam_inverse_sqrt,warmup_updates=0", "adam,lr=-1"]
)
def test_bad_optimizer_strings_are_refused(text):
    with pytest.raises(Exception, match="--optimizer"):
        OptimizerOptions.parse(text)


def test_an_iteration_draws_steps_as_the_originals_shuf_order():
    """Per objective, CLM first: min(5, n) draws with replacement among the monolingual steps, then among the
    parallel ones; with lg_sampling_factor probabilities, languages come up in those proportions."""
    import numpy as np

    from xlm.train import iteration_steps

    cfg = TrainConfig(data="", out="", clm=["en", "fr"], mlm=["en", "fr", "de", "en-fr", "de-en"])
    probabilities = {"clm-mono": np.array([0.8, 0.2]), "mlm-mono": None, "mlm-para": None, "clm-para": None}
    order = np.random.default_rng(0)
    draws = [iteration_steps(cfg, order, probabilities) for _ in range(2000)]
    for steps in draws:
        assert [objective for objective, _ in steps] == ["clm"] * 2 + ["mlm"] * 5
        assert all("-" not in lang for _, lang in steps[:5]) and all("-" in lang for _, lang in steps[5:])
    english = sum(lang == "en" for steps in draws for _, lang in steps[:2]) / 4000
    assert abs(english - 0.8) < 3 * (0.8 * 0.2 / 4000) ** 0.5  # three standard deviations of the frequency
    assert any(steps[2] == steps[3] for steps in draws)  # with replacement


# --- Training works -------------------------------------------------------------------------------------------


def test_a_tiny_model_overfits_a_small_corpus(tiny, tmp_path):
    """16 sentences repeated: CLM loss falls from ~ln(512) = 6.2 to below 0.5 nats within 150 steps."""
    text = tmp_path / "small.en"
    text.write_text("\n".join(sentences(EN, 16, seed=3)) + "\n", encoding="utf-8")
    tokenizer = Tokenizer.from_pretrained(tiny, preset="original")
    data.prepare(tmp_path / "data", tokenizer, mono={"en": text})
    cfg = TrainConfig(
        data=str(tmp_path / "data"), out=str(tmp_path / "run"), init=str(tiny), clm=["en"], steps=150,
        batch_size=4, bptt=32, optimizer="adam,lr=0.003", dropout=0.0, attention_dropout=0.0, progress=False,
    )  # fmt: skip
    result = train(cfg)
    curve = [r["loss"] for r in result.records if "loss" in r]
    assert len(curve) == 150 and curve[0] > 5.0
    assert sum(curve[-10:]) / 10 < 0.5, curve[-10:]


def test_a_clm_checkpoint_loads_in_transformers_with_our_logits(tiny, corpus, tmp_path):
    """Trained with CLM, saved: transformers' XLMWithLMHeadModel reads causal=true from config.json and gives
    our causal logits within 1e-5 (fp32); xlm.load_pretrained reads the objective."""
    cfg = TrainConfig(
        data=str(corpus), out=str(tmp_path / "run"), init=str(tiny), clm=["en", "fr"], steps=6, batch_size=4,
        bptt=32, optimizer="adam,lr=0.01", progress=False,
    )  # fmt: skip
    checkpoint = train(cfg).checkpoint
    assert checkpoint == tmp_path / "run" / "checkpoint-6"
    ours = load_pretrained(checkpoint)
    assert ours.config.objective == "clm"
    assert not torch.equal(ours.embeddings.weight, load_pretrained(tiny).embeddings.weight)  # it did train
    transformers = import_transformers()
    theirs = transformers.XLMWithLMHeadModel.from_pretrained(checkpoint).eval()
    assert theirs.config.causal is True
    ids = torch.randint(14, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    langs = torch.tensor([[0], [1]]).expand(2, 20)
    with torch.no_grad():
        expected = theirs(input_ids=ids, langs=langs).logits
        got = ours(ids, langs, causal=True)
    assert (got - expected).abs().max().item() <= 1e-5


def test_from_scratch_with_a_config_file(tiny, corpus, tmp_path):
    """--model-config: fresh weights (the original's initialisation, from the seed) of that architecture."""
    config = dataclasses.replace(scaled_down(PRESETS["xlm-clm-enfr-1024"]), n_layers=1)
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_config()))
    cfg = TrainConfig(
        data=str(corpus), out=str(tmp_path / "run"), model_config=str(tmp_path / "config.json"), tokenizer=str(tiny),
        mlm=["en-fr"], steps=2, batch_size=4, progress=False,
    )  # fmt: skip
    model = load_pretrained(train(cfg).checkpoint)
    assert model.config.n_layers == 1 and model.config.objective == "mlm"
    std = model.embeddings.weight[14:].std().item()
    assert abs(std - config.dim**-0.5) < 0.02  # N(0, dim^-1/2), moved a little by two updates of ~1e-4


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps(tiny, corpus, tmp_path, amp):
    """bf16 autocast, and fp16 autocast with loss scaling (run on the CPU here; meant for GPUs): finite losses
    close to fp32's first-step loss, and fp16's scaler state saved with the checkpoint."""
    cfg = TrainConfig(
        data=str(corpus), out=str(tmp_path / amp), init=str(tiny), clm=["en"], mlm=["en-fr"], steps=3,
        batch_size=4, bptt=32, dropout=0.0, attention_dropout=0.0, progress=False,
    )  # fmt: skip
    fp32 = [r["loss"] for r in train(dataclasses.replace(cfg, out=str(tmp_path / "fp32"))).records if "loss" in r]
    result = train(dataclasses.replace(cfg, amp=amp))
    mixed = [r["loss"] for r in result.records if "loss" in r]
    assert all(math.isfinite(x) for x in mixed)
    assert abs(mixed[0] - fp32[0]) < 0.05  # the same batch and weights; bf16 keeps ~3 significant digits
    scaler = torch.load(result.checkpoint / "training_state.pt", weights_only=True)["scaler"]
    assert (scaler.get("scale", 0) > 0) == (amp == "fp16")


def test_accumulated_micro_batches_give_the_mean_over_all_their_tokens(tiny, corpus, tmp_path):
    """accumulate=2: one update with the gradient of the mean loss over both global batches' tokens, computed here
    by hand on a copy of the model (Adam's eps 1e-6: see the torchrun test for why)."""
    import copy

    from xlm import objectives
    from xlm.train import setup, train_step

    cfg = TrainConfig(
        data=str(corpus), out=str(tmp_path), init=str(tiny), clm=["en"], accumulate=2, batch_size=3, bptt=16,
        dropout=0.0, attention_dropout=0.0, optimizer="adam,lr=0.001,eps=0.000001", progress=False,
    )  # fmt: skip
    run = setup(cfg, torch.device("cpu"), None)
    reference, source = copy.deepcopy(run.model).train(), copy.deepcopy(run.sources["clm:en"])
    first, second = source.next_batch(), source.next_batch()
    record = train_step(run, "clm", "en")

    (sum1, n1), (sum2, n2) = objectives.clm_loss(reference, first), objectives.clm_loss(reference, second)
    mean = (sum1 + sum2) / (n1 + n2)
    mean.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 5.0)
    torch.optim.AdamW(reference.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.0).step()
    assert record["tokens"] == n1 + n2 == 2 * 3 * 15  # bptt - 1 predicted tokens per row
    assert record["loss"] == pytest.approx(mean.item(), rel=1e-6)
    assert record["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    ours, theirs = run.model.state_dict(), reference.state_dict()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-6


# --- Resume, killed runs and killed saves ---------------------------------------------------------------------

RUN = ["--clm", "en", "--mlm", "en,en-fr", "--steps", "8", "--save-every", "4", "--batch-size", "4", "--bptt", "24",
       "--accumulate", "2", "--optimizer", "adam_inverse_sqrt,lr=0.002,warmup_updates=3", "--eval-every", "4",
       "--eval-batches", "2", "--no-progress"]  # fmt: skip

KILL_AFTER_SAVE = """
import os, signal, sys
import xlm.train as t
save = t.save_checkpoint
def save_then_die(run, tokenizer_dir):
    path = save(run, tokenizer_dir)
    if run.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a machine failure
    return path
t.save_checkpoint = save_then_die
sys.exit(t.main(sys.argv[1:]))
"""

KILL_DURING_SAVE = """
import os, signal, sys
import xlm.train as t
write = t.write_safetensors
def write_then_die(tensors, path):
    if ".checkpoint-8.partial-" in str(path):
        path.write_bytes(b"a torn file")
        os.kill(os.getpid(), signal.SIGKILL)
    write(tensors, path)
t.write_safetensors = write_then_die
sys.exit(t.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def reference_run(tiny, corpus, tmp_path_factory) -> Path:
    """8 steps uninterrupted (CLM, MLM, TLM; dropout 0.1 on; accumulation; warm-up), checkpoints at 4 and 8."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = cli(["--data", str(corpus), "--init", str(tiny), "--out", str(out), *RUN])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """Bitwise: every step's loss, the weights, and the optimizer's moments."""
    assert losses(run) == losses(reference) and len(losses(run)) == 8
    assert (run / "checkpoint-8" / "model.safetensors").read_bytes() == (
        reference / "checkpoint-8" / "model.safetensors"
    ).read_bytes()
    ours, theirs = (torch.load(r / "checkpoint-8" / "training_state.pt", weights_only=True) for r in (run, reference))
    for key, state in ours["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], theirs["optimizer"]["state"][key]["exp_avg_sq"])


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_the_uninterrupted_run(tiny, corpus, tmp_path, reference_run):
    out = tmp_path / "run"
    killed = cli(["--data", str(corpus), "--init", str(tiny), "--out", str(out), *RUN], script=KILL_AFTER_SAVE)
    assert killed.returncode == -9
    assert find_checkpoint(out) == out / "checkpoint-4"
    assert len(losses(out)) == 4  # the killed process wrote steps 1-4 (and the evaluation at 4)
    resumed = cli(["--resume", str(out), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference_run)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "split" in r] == [0, 4, 8]  # evaluations once each, not repeated


def test_a_fast_run_resumes_bitwise_and_trains_as_the_plain_run(tiny, corpus, tmp_path, reference_run):
    """--fast (oneDNN products, the head and its loss fused: xlm/fast.py): a run killed after a checkpoint resumes
    bit for bit, and every loss is the plain run's (the same batches, masks and dropout) within fp32 rounding."""
    args = ["--data", str(corpus), "--init", str(tiny), *RUN, "--fast"]
    whole = cli([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = cli([*args, "--out", str(tmp_path / "run")], script=KILL_AFTER_SAVE)
    assert killed.returncode == -9
    resumed = cli(["--resume", str(tmp_path / "run"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "run", tmp_path / "whole")
    saved = json.loads((tmp_path / "run" / "checkpoint-8" / "train_config.json").read_text())
    assert saved["fast"] is True  # the resumed run continued fast, as configured
    fast, plain = losses(tmp_path / "whole"), losses(reference_run)
    assert max(abs(a - b) for a, b in zip(fast, plain, strict=True)) <= 1e-5 * max(plain)
    assert fast != plain  # another summation order: not bit for bit the plain run (so the fast path ran)


def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(tiny, corpus, tmp_path, reference_run):
    out = tmp_path / "run"
    killed = cli(["--data", str(corpus), "--init", str(tiny), "--out", str(out), *RUN], script=KILL_DURING_SAVE)
    assert killed.returncode == -9
    assert not (out / "checkpoint-8").exists()
    assert list(out.glob(".checkpoint-8.partial-*"))  # the torn save, aside
    previous = out / "checkpoint-4"
    assert (previous / "model.safetensors").read_bytes() == (
        reference_run / "checkpoint-4" / "model.safetensors"
    ).read_bytes()
    load_pretrained(previous)  # loadable
    assert find_checkpoint(out) == previous
    resumed = cli(["--resume", str(out), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(out.glob(".checkpoint-*"))  # the resumed run cleared the leftover
    assert_same_run(out, reference_run)


# --- Several processes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [[], ["--fast"]], ids=["plain", "fast"])
def test_torchrun_two_processes_equal_one(tiny, corpus, tmp_path, variant):
    """The same global batches split over 2 gloo processes (2 accumulated per step): losses within 1e-6, weights
    within 1e-5 after 6 steps.

    Dropout off (each process draws its own); MLM masks are drawn on the global batch, so they agree. Adam's eps is
    1e-6 here rather than 1e-8: Adam divides each gradient by its own magnitude, so where the exact gradient is 0
    or nearly (the key biases, which softmax ignores; an FFN unit that barely fires) it turns the rounding noise of
    the sums, which differs between one process and two, into steps of ~lr; with eps 1e-8 such weights differ by
    up to 4e-5 after 6 steps at lr 3e-3, while every other weight agrees within 1e-6. The same with --fast (its
    products and fused head under DistributedDataParallel).
    """
    args = ["--data", str(corpus), "--init", str(tiny), "--clm", "en", "--mlm", "fr,en-fr", "--steps", "6",
            "--batch-size", "6", "--bptt", "24", "--accumulate", "2", "--optimizer", "adam,lr=0.003,eps=0.000001",
            "--dropout", "0", "--attention-dropout", "0", "--eval-batches", "2", "--no-progress", *variant]  # fmt: skip
    one = cli([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli([*args, "--out", str(tmp_path / "two")], launcher=("-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2"))  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(single) == len(double) == 6
    assert max(abs(a - b) for a, b in zip(single, double, strict=True)) <= 1e-6
    assert len(set(single)) == 6  # the steps differ: the comparison is not of one repeated number
    weights = [load_file(tmp_path / run / "checkpoint-6" / "model.safetensors") for run in ("one", "two")]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) <= 1e-5
    start = load_file(tiny / "model.safetensors")
    assert max((weights[0][k] - start[k]).abs().max().item() for k in start) > 1e-3  # the weights did move
    evaluations = [
        json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("one", "two")
    ]
    for key, value in evaluations[0].items():
        if key.endswith("_ppl"):
            assert evaluations[1][key] == pytest.approx(value, rel=1e-5)


# --- Bad input: one line, exit code 2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def english_only(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("english")
    (root / "en.txt").write_text("\n".join(sentences(EN, 20, seed=5)) + "\n", encoding="utf-8")
    return data.prepare(root / "data", Tokenizer.from_pretrained(tiny, preset="original"), mono={"en": root / "en.txt"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume", "{tmp}/nowhere"], "not a training checkpoint"),
        (["--resume", "{tmp}"], "not a training checkpoint"),
        (["--resume", "{model}"], "not a training checkpoint"),
        (["{base}", "--clm", "fr"], "no training data for fr"),
        (["{base}", "--mlm", "en-fr"], "no training data for en-fr"),
        (["{base}", "--clm", "de"], "the model has no language 'de'"),
        (["{base}", "--clm", "en", "--preset", "xlm-mlm-enfr-1024"], "exactly one of --init"),
        (["{base}"], "nothing to train"),
        (["{base}", "--clm", "en-fr"], "a pair is a TLM step"),
        (["{base}", "--clm", "en", "--accumulate", "0"], "--accumulate must be >= 1"),
        (["{base}", "--clm", "en", "--amp", "fp8"], "--amp must be one of"),
        (["{base}", "--clm", "en", "--optimizer", "adam,momentum=0.9"], "--optimizer"),
        (["--data", "{data}", "--clm", "en"], "--out is required"),
        (["{base}", "--clm", "en", "--word-mask-keep-rand", "0.5,0.5,0.5"], "three fractions"),
        (["{base}", "--clm", "en", "--eval-every", "5"], "no valid split"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tiny, english_only, tmp_path, capsys, args, message):
    base = ["--data", str(english_only), "--init", str(tiny), "--out", str(tmp_path / "run"), "--no-progress"]
    argv = []
    for arg in args:
        if arg == "{base}":
            argv += base
        else:
            argv.append(arg.format(tmp=tmp_path, model=tiny, data=english_only))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_resume_refuses_changed_training_options(tiny, corpus, tmp_path, reference_run, capsys):
    assert main(["--resume", str(reference_run), "--optimizer", "adam,lr=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--resume continues a run" in err


# --- The training page ----------------------------------------------------------------------------------------


def test_every_xlm_train_command_of_the_training_page_parses():
    """docs/training.md's `xlm train` commands (shell blocks, continuation lines joined) use real options."""
    import re
    import shlex

    from xlm.train import build_parser

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [
        line.split("xlm train", 1)[1]
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if "xlm train" in line
    ]
    assert len(commands) >= 6
    for command in commands:
        args = build_parser().parse_args(shlex.split(command.split("#")[0]))
        assert args.resume is not None or (args.data and args.out), command
