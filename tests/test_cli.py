"""The `xlm` command: every verb through a subprocess on a synthetic checkpoint, and its bad-input contract.

Contract for bad input: exit code 2 and exactly one line on stderr (`xlm VERB: error: ...`), no traceback.
Subprocesses run `python -m xlm` from this checkout with `XLM_CACHE` in a temporary directory, where the
session's full-size checkpoint (the same seeded preset that `--synthetic` would write) is linked in.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FULL_SIZE, scaled_down

from xlm.checkpoint import load_pretrained
from xlm.cli import build_parser, main
from xlm.config import PRESETS
from xlm.generation import generate
from xlm.inputs import left_pad
from xlm.scoring import rank_fillers, token_logprobs
from xlm.synthetic import save_synthetic_checkpoint
from xlm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Scaled-down checkpoints (with the synthetic character-level tokenizer) of three presets."""
    root = tmp_path_factory.mktemp("cli")
    presets = ("xlm-clm-enfr-1024", "xlm-mlm-enfr-1024", "xlm-mlm-en-2048")
    return {p: save_synthetic_checkpoint(scaled_down(PRESETS[p]), root / p, seed=1) for p in presets}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("xlm-cache")
    return {**os.environ, "XLM_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def xlm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xlm", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def ok_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess, verb: str, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"xlm {verb}: error: "), result.stderr
    assert message in result.stderr


# --- Each verb, through a subprocess ------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_on_the_synthetic_checkpoint_equals_the_python_api(env, full_size_checkpoint):
    cached = Path(env["XLM_CACHE"]) / "synthetic" / "seed0" / FULL_SIZE
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.symlink_to(full_size_checkpoint, target_is_directory=True)  # what --synthetic would write (seed 0)
    args = ["generate", "--synthetic", FULL_SIZE, "Wikipedia was used to", "--max-new-tokens", "8", "--json"]
    out = ok_json(xlm(env, *args))
    [result] = out["results"]
    prompt = result["prompt_ids"]
    assert prompt[0] == 1 and prompt[-1] != 1  # original framing: `</s> ...`, without the closing `</s>`
    model = load_pretrained(full_size_checkpoint)
    expected = generate(model, torch.tensor([prompt]), 0, max_new_tokens=8).rows()[0]
    assert result["generated_ids"] == expected and len(expected) == 8
    tokenizer = Tokenizer.from_pretrained(full_size_checkpoint, preset="original")
    assert result["continuation"] == tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_a_sampled_batch_in_another_language_reproducibly(env, tiny, capsys):
    path = tiny["xlm-clm-enfr-1024"]
    args = ["generate", "--model", str(path), "Le chat", "Wikipedia was used to", "--lang", "en"]
    args += ["--continue-lang", "fr", "--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "--seed", "3"]
    first = ok_json(xlm(env, *args, "--json"))
    assert first["seed"] == 3 and first["continue_lang"] == "fr"
    model = load_pretrained(path)
    input_ids, attention_mask = left_pad([r["prompt_ids"] for r in first["results"]])
    expected = generate(
        model, input_ids, 0, attention_mask=attention_mask, continue_lang=1, max_new_tokens=32, temperature=0.9,
        top_k=40, top_p=0.95, generator=torch.Generator().manual_seed(3),
    ).rows()  # fmt: skip
    assert [r["generated_ids"] for r in first["results"]] == expected  # the same draws: reproducible
    assert main(args) == 0  # plain output, in process
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{r['prompt']} {r['continuation']}".rstrip() for r in first["results"]]


def test_score_sentences_equals_the_python_api(env, tiny):
    path = tiny["xlm-clm-enfr-1024"]
    texts = ["Le chat est noir.", "Bonjour !"]
    out = ok_json(xlm(env, "score", "--model", str(path), "--lang", "fr", *texts, "--json"))
    tokenizer = Tokenizer.from_pretrained(path, preset="original")
    model = load_pretrained(path)
    for text, result in zip(texts, out["results"], strict=True):
        ids = tokenizer.encode(text, "fr")
        expected = token_logprobs(model, torch.tensor([ids]), 1)[0]
        assert result["ids"] == ids and result["token_logprobs"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert result["logprob"] == pytest.approx(expected.sum().item(), abs=1e-4)


@pytest.mark.parametrize("flag", ["--fast", "--compile"])
def test_fast_and_compiled_generation_give_the_plain_tokens(tiny, capsys, flag):
    """--fast (xlm.fast's kernels) and --compile (also a compiled decode step) change speed, not tokens."""
    args = ["generate", "--model", str(tiny["xlm-clm-enfr-1024"]), "Le chat", "Wikipedia was used to", "--json"]
    args += ["--max-new-tokens", "12", "--lang", "en"]
    results = {}
    for variant in ([], [flag]):
        assert main(args + variant) == 0
        results[tuple(variant)] = [r["generated_ids"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert results[(flag,)] == results[()] and all(len(ids) == 12 for ids in results[()])


def test_fast_scoring_gives_the_plain_scores(tiny, capsys):
    args = ["score", "--model", str(tiny["xlm-clm-enfr-1024"]), "--lang", "fr", "Le chat est noir.", "Bonjour !"]
    scores = {}
    for variant in ([], ["--fast"]):
        assert main(args + variant + ["--json"]) == 0
        scores[tuple(variant)] = [r["token_logprobs"] for r in json.loads(capsys.readouterr().out)["results"]]
    for fast, plain in zip(scores[("--fast",)], scores[()], strict=True):
        assert fast == pytest.approx(plain, abs=1e-5)  # another summation order in the matrix products


def test_score_file_perplexity_equals_the_mean_computed_by_hand(env, tiny, tmp_path, capsys):
    path = tiny["xlm-clm-enfr-1024"]
    lines = ["The cat is black.", "", "A dog.", "Wikipedia was used to train it, they say.", "Yes", "Hello world!"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["score", "--model", str(path), "--file", str(corpus), "--framing", "transformers", "--batch-tokens", "48"]
    out = ok_json(xlm(env, *args, "--json"))

    tokenizer, model = Tokenizer.from_pretrained(path, preset="transformers"), load_pretrained(path)
    nll, count = 0.0, 0
    with torch.no_grad():
        for line in filter(None, lines):  # blank lines are skipped
            x = torch.tensor([tokenizer.encode(line, "en")])
            assert x[0, 0] == 0  # transformers framing: `<s> ... </s>`
            logprobs = model(x, 0, causal=True)[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None])
            nll -= logprobs.double().sum().item()
            count += x.size(1) - 1
    assert out["sentences"] == 5 and out["tokens"] == count
    assert out["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert main(args) == 0  # plain output, in process
    assert capsys.readouterr().out.startswith(f"perplexity {out['perplexity']:.3f} (mean NLL ")


@pytest.mark.parametrize("text", ["Paris is the <special1> of France.", "C'est <special1> été, <special1>!"])
def test_fill_mask_of_a_masked_lm_equals_the_transformers_pipeline(env, tiny, text):
    """xlm-mlm-en-2048 has no language embeddings, so the pipeline (which passes no langs) is comparable."""
    from xlm.parity import load_transformers_model
    from xlm.synthetic import import_transformers

    transformers = import_transformers()
    path = tiny["xlm-mlm-en-2048"]
    args = ["fill-mask", "--model", str(path), text, "--framing", "transformers", "--top-k", "4", "--json"]
    ours = ok_json(xlm(env, *args))
    pipeline = transformers.pipeline(
        "fill-mask", model=load_transformers_model(path), tokenizer=transformers.XLMTokenizer.from_pretrained(path)
    )
    theirs = pipeline(text, top_k=4)
    if text.count("<special1>") == 2:  # one list per mask
        assert len(ours) == len(theirs) == 2
    else:
        ours, theirs = [ours], [theirs]
    for our_row, their_row in zip(ours, theirs, strict=True):
        assert [(r["token"], r["token_str"], r["sequence"]) for r in our_row] == [
            (r["token"], r["token_str"], r["sequence"]) for r in their_row
        ]
        assert [r["score"] for r in our_row] == pytest.approx([r["score"] for r in their_row], abs=1e-6)


def test_fill_mask_of_a_causal_lm_ranks_candidates_by_sentence_likelihood(env, tiny):
    path = tiny["xlm-clm-enfr-1024"]
    text, names = "Le <special1> est noir.", ["chat", "chien", "x"]
    out = ok_json(
        xlm(env, "fill-mask", "--model", str(path), "--lang", "fr", text, "--candidates", ",".join(names), "--json")
    )
    tokenizer = Tokenizer.from_pretrained(path, preset="original", parse_special_tokens=True)  # as fill-mask does
    model = load_pretrained(path)
    fillers = [tokenizer.encode(name, "fr", add_special_tokens=False) for name in names]
    scores = rank_fillers(model, tokenizer.encode(text, "fr"), fillers, 1).tolist()
    expected = sorted(zip(names, scores, strict=True), key=lambda pair: pair[1], reverse=True)
    assert [r["candidate"] for r in out] == [name for name, _ in expected]
    assert [r["logprob"] for r in out] == pytest.approx([score for _, score in expected], abs=1e-4)
    assert out[0]["sequence"] == f"Le {expected[0][0]} est noir ."


def test_parity_verb_delegates_to_the_parity_check(env, tiny):
    result = xlm(env, "parity", "--model", str(tiny["xlm-clm-enfr-1024"]), "--seq", "12")
    assert result.returncode == 0, result.stderr
    assert "top-1 agreement" in result.stdout and "within 0.0001" in result.stdout


@pytest.mark.parametrize(
    ("verb", "args", "message"),
    [
        ("generate", ["--lang", "de", "Hallo"], "unknown language 'de'; this model knows: en, fr"),
        ("score", ["--model", "/nonexistent/checkpoint", "Hello"], "no checkpoint at /nonexistent/checkpoint"),
        ("fill-mask", ["The <special1> is black."], "causal LM: it never sees the right side of a mask"),
        ("parity", ["--batch", "0"], "--batch must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(env, tiny, verb, args, message):
    model = [] if "--model" in args else ["--model", str(tiny["xlm-clm-enfr-1024"])]
    assert_one_line_error(xlm(env, verb, *model, *args), verb, message)


# --- More bad input, in process (no interpreter start-up) -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "  "], "empty prompt"),
        (["generate", "x" * 600], "a prompt of 601 tokens plus 32 new ones needs 633 positions; XLM has 512"),
        (["generate", "Hi", "--max-new-tokens", "600"], "needs 603 positions; XLM has 512"),
        (["generate", "Hi", "--continue-lang", "xx"], "unknown language 'xx'"),
        (["generate", "Hi", "--temperature", "-1"], "argument --temperature: -1 is not 0 (greedy)"),
        (["generate", "Hi", "--device", "cuda:0" if not torch.cuda.is_available() else "nonsense"], "device"),
        (["generate", "Hi", "--dtype", "fp8"], "argument --dtype: invalid choice"),
        (["generate", "Hi", "--synthetic", "xlm-clm-enfr-1024"], "not allowed with argument --model"),
        (["score"], "give sentences to score or --file"),
        (["score", "--file", "/nonexistent.txt"], "cannot read /nonexistent.txt"),
        (["score", "x" * 520], "the sentence has 522 tokens; XLM has 512 positions"),
        (["fill-mask", "No mask here", "--candidates", "a,b"], "exactly one mask token <special1>, found 0"),
        (["fill-mask", "A <special1>.", "--candidates", "a,,b"], "--candidates must be a comma-separated list"),
    ],
)
def test_more_bad_input_is_one_line_and_exit_code_2(tiny, capsys, args, message):
    verb, rest = args[0], args[1:]
    code = _main_exit_code([verb, "--model", str(tiny["xlm-clm-enfr-1024"]), *rest])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"xlm {verb}: error: ") and message in err, err


def test_a_masked_lm_and_an_unknown_objective_are_refused_with_the_flag_to_pass(tiny, tmp_path, capsys):
    mlm = str(tiny["xlm-mlm-enfr-1024"])
    assert _main_exit_code(["generate", "--model", mlm, "Hi", "--max-new-tokens", "2"]) == 2
    assert "pass allow_mlm=True (command line: --allow-mlm)" in capsys.readouterr().err
    assert _main_exit_code(["generate", "--model", mlm, "Hi", "--max-new-tokens", "2", "--allow-mlm"]) == 0
    capsys.readouterr()
    mystery = shutil.copytree(tiny["xlm-clm-enfr-1024"], tmp_path / "mystery")  # not a preset name: objective None
    assert _main_exit_code(["score", "--model", str(mystery), "Hi"]) == 2
    assert "(command line: --objective clm|mlm)" in capsys.readouterr().err
    assert _main_exit_code(["score", "--model", str(mystery), "--objective", "clm", "Hi"]) == 0


def test_help_lists_every_verb():
    text = build_parser().format_help()
    for verb in ("generate", "score", "fill-mask", "parity", "download", "convert"):
        assert verb in text


def _main_exit_code(argv: list[str]) -> int:
    """`main`'s return value, or argparse's exit code (argparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code
