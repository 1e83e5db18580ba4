#!/usr/bin/env python
"""The experiment of docs/experiments.md: does TLM align English and French?

    python scripts/experiment.py                  # the whole page: corpus, three runs, measurements, plots, tables
    python scripts/experiment.py --tokens 500000  # another token budget per run
    python scripts/experiment.py --quick          # a pipeline check: a few hundred pairs, a tiny model (seconds)

1. The corpus: real English-French translations from the system's gettext catalogs (xlm/gettext_corpus.py),
   split by catalog into train / valid / test, then `xlm prepare` with the real enfr BPE vocabulary.
2. Three models of one small architecture (4 layers, 256 wide), trained the same way (seed, initial weights,
   optimizer, batch shapes) on the same number of input tokens, differing only in the objective:
   CLM (en, fr); MLM (en, fr); MLM + TLM (en, fr, en-fr). Each run is trained in segments (the trainer resumes
   exactly from its checkpoint), and cross-lingual retrieval is measured at the end of every segment.
3. Measurements on the test catalogs: per-language perplexity and accuracy (next token for CLM, masked tokens for
   the others), retrieval en->fr and fr->en among all test pairs (chance 1/M) next to two baselines on the same
   candidates (the untrained model, a bag of BPE pieces), and masked-token accuracy with and without the
   translation beside the masked sentence.
4. Plots under docs/img/, results.json and the tables, which replace the block between the markers of
   docs/experiments.md. --quick writes its plots and tables under its --out directory and leaves docs/ alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from xlm import data, train
from xlm.checkpoint import load_pretrained
from xlm.cliutil import OneLineParser
from xlm.config import PRESETS
from xlm.errors import XLMError
from xlm.gettext_corpus import (
    LOCALE_DIR,
    SPLITS,
    build_corpus,
    counts_summary,
    default_enfr_vocab_dir,
    enfr_tokenizer,
    write_corpus,
    write_docs_table,
)
from xlm.model import XLM
from xlm.retrieval import bag_of_pieces, retrieval, sentence_embeddings

REPO_ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- experiment.py: begin -->", "<!-- experiment.py: end -->"
LANGS = ("en", "fr")
RUNS = {  # name -> (CLM steps, MLM/TLM steps), the trainer's --clm and --mlm
    "CLM": (["en", "fr"], []),
    "MLM": ([], ["en", "fr"]),
    "MLM + TLM": ([], ["en", "fr", "en-fr"]),
}


@dataclasses.dataclass
class Settings:
    """What the three runs share. tokens: the input tokens each run reads (ids and `</s>`, no padding)."""

    out: Path = REPO_ROOT / "runs" / "experiment"
    images: Path = REPO_ROOT / "docs" / "img"
    page: Path | None = REPO_ROOT / "docs" / "experiments.md"  # None: tables in out/tables.md only
    tokens: int = 1_000_000  # CLM, the slowest: 2.5-2.8 s a step of 2,048 tokens on 2 cores: ~20 minutes
    n_layers: int = 4
    dim: int = 256
    n_heads: int = 8
    dropout: float = 0.1
    batch_size: int = 32  # streams of bptt tokens (CLM, MLM); TLM batches hold pairs up to as many tokens
    bptt: int = 64
    max_len: int = 100
    optimizer: str = "adam_inverse_sqrt,lr=0.0005,beta1=0.9,beta2=0.98,warmup_updates=100"
    segments: int = 8  # training is cut here for a retrieval measurement and a validation (the curves' points)
    eval_batches: int = 5  # validation batches per corpus at each segment's end (the test split is read whole)
    seed: int = 0
    max_pairs: int | None = None  # keep the first pairs of each split only
    workers: int = 2  # tokenizer processes
    locale_dir: Path = LOCALE_DIR
    vocab_dir: Path = dataclasses.field(default_factory=default_enfr_vocab_dir)


QUICK = {  # --quick, and tests/test_experiment.py: the pipeline on a few hundred pairs in seconds
    "out": REPO_ROOT / "runs" / "experiment-quick", "page": None, "tokens": 30_000, "n_layers": 2, "dim": 32,
    "n_heads": 4, "dropout": 0.0, "batch_size": 16, "bptt": 16, "segments": 2, "eval_batches": 1, "max_pairs": 200,
    "optimizer": "adam_inverse_sqrt,lr=0.01,beta1=0.9,beta2=0.98,warmup_updates=20", "workers": 1,
}  # fmt: skip


# ---- 1. corpus and prepared data ----------------------------------------------------------------------------


def make_data(settings: Settings) -> tuple[Path, Path, dict]:
    """Corpus text files, the tokenizer directory, the prepared splits; returns (prepared, tokenizer dir, counts)."""
    tokenizer = enfr_tokenizer(settings.vocab_dir)
    corpus = build_corpus(settings.locale_dir, seed=settings.seed)
    if settings.max_pairs is not None:
        for split in corpus.splits.values():
            split.pairs = split.pairs[: settings.max_pairs]
    text = settings.out / "corpus"
    counts = write_corpus(corpus, text, tokenizer=tokenizer, workers=settings.workers)
    tokenizer_dir = tokenizer.save_pretrained(settings.out / "tokenizer")
    prepared = settings.out / "prepared"
    for split in SPLITS:  # xlm prepare --tokenizer DIR --out DIR --split S --mono en F ... --para en fr F1 F2
        argv = ["--tokenizer", str(tokenizer_dir), "--out", str(prepared), "--split", split, "--force"]
        argv += ["--workers", str(settings.workers)]
        for lang in LANGS:
            argv += ["--mono", lang, str(text / f"{split}.{lang}")]
        argv += ["--para", "en", "fr", str(text / f"{split}.en-fr.en"), str(text / f"{split}.en-fr.fr")]
        if data.main(argv) != 0:
            raise SystemExit(2)  # data.main printed the one-line error
    return prepared, tokenizer_dir, counts


def model_config_file(settings: Settings) -> Path:
    """transformers' config.json of the small architecture, with xlm-mlm-enfr-1024's vocabulary and languages."""
    config = dataclasses.replace(
        PRESETS["xlm-mlm-enfr-1024"], n_layers=settings.n_layers, dim=settings.dim, n_heads=settings.n_heads
    )
    path = settings.out / "model-config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_hf_config(), indent=2) + "\n", encoding="utf-8")
    return path


# ---- 2. the runs: one token budget ----------------------------------------------------------------------------


def tokens_per_step(settings: Settings, prepared: Path, mlm: list[str]) -> dict[str, float]:
    """Input tokens of one optimizer step: {"stream": ..., "pairs": ..., "mean": ...}.

    A stream step (CLM, MLM) reads batch_size x bptt tokens. A TLM step reads sentence pairs of len1 + len2 + 4
    tokens (padding excluded) up to about as many (`tokens_per_batch`); over an epoch every kept pair is read
    once, so its mean is the kept pairs' tokens over the batches of an epoch. The trainer's iteration is
    min(5, n) draws among the n monolingual steps, then min(5, m) among the m parallel ones: a fixed mix.
    """
    stream_tokens = settings.batch_size * settings.bptt
    stream = float(stream_tokens)
    pair_steps = [lang for lang in mlm if "-" in lang]
    if not pair_steps:
        return {"stream": stream, "pairs": 0.0, "mean": stream}
    pairs = data.open_prepared(prepared, "train", None).para[("en", "fr")]
    batches = data.PairBatches(
        pairs, lang_ids=(0, 1), eos_id=1, pad_id=2, max_len=settings.max_len, tokens_per_batch=stream_tokens
    )
    per_batch = float(batches.row_lengths[batches.pairs].sum()) / len(batches)
    n_mono, n_para = min(5, len(mlm) - len(pair_steps)), min(5, len(pair_steps))
    return {"stream": stream, "pairs": per_batch, "mean": (n_mono * stream + n_para * per_batch) / (n_mono + n_para)}


def run_config(settings: Settings, name: str, prepared: Path, tokenizer_dir: Path, steps: int) -> train.TrainConfig:
    clm, mlm = RUNS[name]
    return train.TrainConfig(
        data=str(prepared), out=str(run_dir(settings, name)), clm=clm, mlm=mlm,
        model_config=str(model_config_file(settings)), tokenizer=str(tokenizer_dir), optimizer=settings.optimizer,
        dropout=settings.dropout, attention_dropout=settings.dropout, steps=steps, batch_size=settings.batch_size,
        bptt=settings.bptt, max_len=settings.max_len, tokens_per_batch=settings.batch_size * settings.bptt,
        eval_batches=settings.eval_batches, seed=settings.seed,
        progress=False,
    )  # fmt: skip


def run_dir(settings: Settings, name: str) -> Path:
    return settings.out / "runs" / name.replace(" + ", "-").lower()


def train_run(settings: Settings, name: str, prepared: Path, tokenizer_dir: Path, sentences: dict) -> dict:
    """One run, in `segments` parts; after each, retrieval on the test pairs. Returns the run's record."""
    per_step = tokens_per_step(settings, prepared, RUNS[name][1])
    steps = math.ceil(settings.tokens / per_step["mean"])
    ends = sorted({math.ceil(steps * k / settings.segments) for k in range(1, settings.segments + 1)})
    shutil.rmtree(run_dir(settings, name), ignore_errors=True)
    cfg = run_config(settings, name, prepared, tokenizer_dir, ends[0])
    causal = bool(RUNS[name][0])
    start = model_retrieval(train.build_model(cfg, None), sentences, causal)  # step 0: the run's initial weights
    curve = [{"step": 0, "en->fr": start["en->fr"], "fr->en": start["fr->en"]}]
    checkpoint, wall, cpu = None, 0.0, 0.0
    for end in ends:
        started, started_cpu = time.perf_counter(), time.process_time()
        if checkpoint is None:
            result = train.train(cfg)
        else:
            result = train.train(train.resume_config(checkpoint, steps=end), resume=checkpoint)
        wall, cpu = wall + time.perf_counter() - started, cpu + time.process_time() - started_cpu
        if checkpoint is not None:
            shutil.rmtree(checkpoint)  # only the latest is kept: a checkpoint of the full model is ~250 MB
        checkpoint = result.checkpoint
        scores = model_retrieval(load_pretrained(checkpoint), sentences, causal)
        curve.append({"step": end, "en->fr": scores["en->fr"], "fr->en": scores["fr->en"]})
        print(f"{name}: step {end}/{steps}, retrieval en->fr {100 * scores['en->fr']:.1f}%", file=sys.stderr)
    records = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    step_seconds = sum(r["seconds"] for r in records if "loss" in r)
    tokens = sum(per_step["pairs"] if "-" in r["lang"] else per_step["stream"] for r in records if "loss" in r)
    return {
        "steps": steps, "input_tokens": round(tokens), "wall_seconds": wall, "cpu_seconds": cpu,
        "step_seconds": step_seconds, "tokens_per_second": tokens / step_seconds, "checkpoint": str(checkpoint),
        "tokens_per_step": per_step, "records": records, "retrieval_curve": curve,
    }  # fmt: skip


# ---- 3. measurements --------------------------------------------------------------------------------------------


def perplexity_and_accuracy(cfg: train.TrainConfig, model: XLM, test: data.PreparedData) -> dict[str, float]:
    """The trainer's evaluation (perplexity, accuracy % of every step of the run) on the whole test split:
    {"en_clm_ppl": ..., "en_clm_acc": ..., ...}. Masks from a generator seeded with 0."""
    cfg = dataclasses.replace(cfg, eval_batches=0)
    options = train.mask_options(cfg, model, test)
    scores = train.evaluate_split(model, cfg, test, mask_options=options, device=torch.device("cpu"), split="test")
    return {key.removeprefix("test_"): value for key, value in scores.items()}


def framed_pairs(prepared: Path, split: str) -> dict[str, list[list[int]]]:
    """A split's pairs, each sentence framed `</s> ... </s>` as in training: {"en": [...], "fr": [...]}, aligned."""
    pairs = data.open_prepared(prepared, split, None).para[("en", "fr")]
    return {
        lang: [[1, *corpus.sentence(i).tolist(), 1] for i in range(len(corpus))]
        for lang, corpus in (("en", pairs.first), ("fr", pairs.second))
    }


def model_retrieval(model: XLM, sentences: dict[str, list[list[int]]], causal: bool) -> dict[str, float]:
    """Retrieval en->fr and fr->en with mean-pooled last layers: plain cosine, and centred per language."""
    vectors = {
        lang: sentence_embeddings(model, ids, model.config.lang2id[lang], causal=causal)
        for lang, ids in sentences.items()
    }
    plain = retrieval(vectors["en"], vectors["fr"])
    centred = retrieval(vectors["en"], vectors["fr"], center=True)
    return {
        "en->fr": plain["forward"], "fr->en": plain["backward"], "chance": plain["chance"],
        "candidates": plain["candidates"], "en->fr centred": centred["forward"], "fr->en centred": centred["backward"],
    }  # fmt: skip


def pieces_retrieval(sentences: dict[str, list[list[int]]], vocab_size: int) -> dict[str, float]:
    scores = retrieval(bag_of_pieces(sentences["en"], vocab_size), bag_of_pieces(sentences["fr"], vocab_size))
    return {"en->fr": scores["forward"], "fr->en": scores["backward"], "chance": scores["chance"]}


def mask_choices(lengths: list[int], rate: float = 0.15, seed: int = 0) -> list[list[int]]:
    """Which tokens of each sentence to mask (indices into the unframed sentence), each with chance `rate`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.nonzero(torch.rand(n, generator=generator) < rate).flatten().tolist() for n in lengths]


@torch.no_grad()
def accuracy_with_and_without_translation(
    model: XLM,
    sentences: dict[str, list[list[int]]],
    masked: str,
    *,
    choices: list[list[int]] | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Masked-token accuracy (%) on the `masked` language's sentences: {"with": ..., "without": ...}.

    The same tokens are masked (all replaced by the mask id: no keep/random) in both conditions: "with", the row
    is the TLM pair `</s> a </s> </s> b </s>` (xlm.data.concat_pairs), masks in `a` only; "without", the row is
    `</s> a </s>` alone. choices: the masked tokens of each sentence (`mask_choices`, 15% seeded with 0 if None).
    """
    other = "fr" if masked == "en" else "en"
    lang_ids = (model.config.lang2id[masked], model.config.lang2id[other])
    firsts = [s[1:-1] for s in sentences[masked]]  # unframed: concat_pairs frames
    choices = mask_choices([len(a) for a in firsts]) if choices is None else choices
    hits, total = {"with": 0, "without": 0}, 0
    model.eval()
    for start in range(0, len(firsts), batch_size):
        first = firsts[start : start + batch_size]
        second = [s[1:-1] for s in sentences[other][start : start + batch_size]]
        pair = data.concat_pairs(first, second, lang_ids, eos_id=model.config.eos_id, pad_id=model.config.pad_id)
        lengths = torch.tensor([len(a) for a in first])  # (B,)
        columns = torch.arange(int(lengths.max()) + 2)[None, :]  # (1, T'): `</s> a </s>` of the longest
        alone = pair.input_ids[:, : columns.size(1)].masked_fill(columns > lengths[:, None] + 1, model.config.pad_id)
        chosen = torch.zeros(alone.shape, dtype=torch.bool)  # (B, T'): the masked tokens, after the first </s>
        for row, picks in enumerate(choices[start : start + batch_size]):
            chosen[row, [1 + i for i in picks]] = True
        in_pair = torch.zeros_like(pair.attention_mask)  # (B, T): `a` sits at the same columns in both rows
        in_pair[:, : columns.size(1)] = chosen
        h = model.encode(
            pair.input_ids.masked_fill(in_pair, model.config.mask_id), pair.langs, causal=False,
            attention_mask=pair.attention_mask, positions=pair.positions,
        )  # fmt: skip
        hits["with"] += (model.logits(h[in_pair]).argmax(-1) == pair.input_ids[in_pair]).sum().item()
        h = model.encode(alone.masked_fill(chosen, model.config.mask_id), lang_ids[0], causal=False)  # (B, T', C)
        hits["without"] += (model.logits(h[chosen]).argmax(-1) == alone[chosen]).sum().item()
        total += int(chosen.sum())
    return {condition: 100.0 * count / max(total, 1) for condition, count in hits.items()}


def measure(name: str, cfg: train.TrainConfig, model: XLM, test: data.PreparedData, sentences: dict) -> dict:
    """Every test figure of one trained model."""
    causal = bool(RUNS[name][0])
    figures = {"test": perplexity_and_accuracy(cfg, model, test)}
    figures["retrieval"] = model_retrieval(model, sentences, causal)
    if not causal:
        figures["translation"] = {lang: accuracy_with_and_without_translation(model, sentences, lang) for lang in LANGS}
    return figures


# ---- 4. plots and tables ----------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"CLM": "tab:blue", "MLM": "tab:orange", "MLM + TLM": "tab:green"}


def loss_curves(run: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(training, validation) points (input tokens seen, loss in nats per predicted token). A training point is
    one step; a validation point is the mean over en and fr of log(perplexity) (TLM's own pairs left out)."""
    per_step, seen, training, validation = run["tokens_per_step"], 0.0, [], []
    for record in run["records"]:
        if "loss" in record:
            seen += per_step["pairs"] if "-" in record["lang"] else per_step["stream"]
            training.append((seen, record["loss"]))
        elif record.get("split") == "valid":
            logs = [math.log(v) for k, v in record.items() if k.endswith("_ppl") and k.count("_") == 3]  # valid_en_..
            validation.append((seen, sum(logs) / len(logs)))
    return training, validation


def plot_losses(runs: dict[str, dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, run in runs.items():
        training, validation = loss_curves(run)
        window = max(1, len(training) // 40)  # a moving average: steps alternate languages and objectives
        xs = [x for x, _ in training][window - 1 :]
        ys = [sum(y for _, y in training[i - window + 1 : i + 1]) / window for i in range(window - 1, len(training))]
        label = f"{name}: training ({window}-step mean)"
        ax.plot([x / 1e6 for x in xs], ys, color=COLOURS[name], alpha=0.5, label=label)
        ax.plot(
            [x / 1e6 for x, _ in validation], [y for _, y in validation], "o-", color=COLOURS[name],
            label=f"{name}: validation (en, fr)",
        )  # fmt: skip
    ax.set_xlabel("input tokens seen (millions)")
    ax.set_ylabel("loss (nats per predicted token)")
    ax.set_title("Loss: next token (CLM), masked tokens (MLM, MLM + TLM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, plt, path)


def plot_retrieval(runs: dict[str, dict], results: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, run in runs.items():
        points = run["retrieval_curve"]
        ax.plot([p["step"] for p in points], [100 * p["en->fr"] for p in points], "o-", color=COLOURS[name],
                label=f"{name}: en→fr")  # fmt: skip
        ax.plot([p["step"] for p in points], [100 * p["fr->en"] for p in points], "s--", color=COLOURS[name],
                alpha=0.6, label=f"{name}: fr→en")  # fmt: skip
    baselines = {"untrained model": results["untrained"]["en->fr"], "bag of BPE pieces": results["pieces"]["en->fr"]}
    for (label, value), style in zip(baselines.items(), ("--", "-."), strict=True):
        ax.axhline(100 * value, linestyle=style, color="grey", label=f"{label}, en→fr ({100 * value:.1f}%)")
    chance = results["pieces"]["chance"]
    ax.axhline(100 * chance, linestyle=":", color="black", label=f"chance ({100 * chance:.3f}%)")
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel(f"retrieval accuracy (%, {results['untrained']['candidates']:,} candidates)")
    ax.set_title("Cross-lingual retrieval on the test catalogs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, plt, path)


def save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def row(cells: list) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


MEASURES = ["model", "en ppl", "fr ppl", "en acc %", "fr acc %", "en→fr %", "fr→en %", "en→fr centred %",
            "fr→en centred %", "en acc with / without fr %", "fr acc with / without en %"]  # fmt: skip


def tables(results: dict, figures: dict[str, str]) -> str:
    """The page's block: the runs, the test figures, the baselines, the figures' links (Markdown)."""
    settings, runs = results["settings"], results["runs"]
    lines = [
        f"Made by `{results['command']}` on {results['date']} ({results['machine']}); {settings['tokens']:,} input "
        f"tokens per run; test split: {results['untrained']['candidates']:,} pairs.",
        "",
        row(["run", "steps", "input tokens", "wall (min)", "CPU (min)", "tokens/s"]),
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, run in runs.items():
        lines.append(row([name, f"{run['steps']:,}", f"{run['input_tokens']:,}", f"{run['wall_seconds'] / 60:.1f}",
                          f"{run['cpu_seconds'] / 60:.1f}", f"{run['tokens_per_second']:,.0f}"]))  # fmt: skip
    lines += [
        "",
        row(MEASURES),
        "|---" + "|--:" * (len(MEASURES) - 1) + "|",
    ]
    for name, run in runs.items():
        objective = "clm" if RUNS[name][0] else "mlm"
        test, ret = run["test"], run["retrieval"]
        effect = [
            f"{run['translation'][lang]['with']:.1f} / {run['translation'][lang]['without']:.1f}"
            if "translation" in run else "—"
            for lang in LANGS
        ]  # fmt: skip
        lines.append(row([
            name, f"{test[f'en_{objective}_ppl']:.1f}", f"{test[f'fr_{objective}_ppl']:.1f}",
            f"{test[f'en_{objective}_acc']:.1f}", f"{test[f'fr_{objective}_acc']:.1f}", *percent(ret), *effect,
        ]))  # fmt: skip
    lines.append(row(["untrained (same size)", "", "", "", "", *percent(results["untrained"]), "", ""]))
    pieces = results["pieces"]
    lines.append(row(["bag of BPE pieces", "", "", "", "", *percent(pieces, centred=False), "", "", "", ""]))
    lines += [
        "",
        f"Chance: {100 * pieces['chance']:.3f}% (1 in {results['untrained']['candidates']:,}). Perplexity and "
        "accuracy: next token for CLM, masked tokens (15%, 80/10/10) for the others. The untrained model's "
        "retrieval is with bidirectional attention.",
        "",
        f"![Training and validation loss against input tokens seen]({figures['loss']})",
        "",
        f"![Retrieval accuracy against training step]({figures['retrieval']})",
    ]
    return "\n".join(lines)


def percent(scores: dict, centred: bool = True) -> list[str]:
    keys = ["en->fr", "fr->en"] + (["en->fr centred", "fr->en centred"] if centred else [])
    return [f"{100 * scores[key]:.1f}" for key in keys]


# ---- the whole experiment ---------------------------------------------------------------------------------------


def run_experiment(settings: Settings, command: str = "python scripts/experiment.py") -> dict:
    """Everything, in order; returns the results (also written to out/results.json, tables to out/tables.md)."""
    started = time.perf_counter()
    prepared, tokenizer_dir, counts = make_data(settings)
    test = data.open_prepared(prepared, "test", None)
    sentences = framed_pairs(prepared, "test")
    runs = {}
    for name in RUNS:
        runs[name] = train_run(settings, name, prepared, tokenizer_dir, sentences)
        cfg = run_config(settings, name, prepared, tokenizer_dir, runs[name]["steps"])
        runs[name].update(measure(name, cfg, load_pretrained(runs[name]["checkpoint"]), test, sentences))
    untrained = train.build_model(run_config(settings, "MLM", prepared, tokenizer_dir, 1), None)  # same weights
    results = {
        "command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in dataclasses.asdict(settings).items()},
        "corpus": {split: counts["splits"][split]["pairs"] for split in SPLITS},
        "runs": runs, "untrained": model_retrieval(untrained, sentences, causal=False),
        "pieces": pieces_retrieval(sentences, untrained.config.vocab_size),
    }  # fmt: skip
    images = {
        "loss": plot_losses(runs, settings.images / "experiment-loss.png"),
        "retrieval": plot_retrieval(runs, results, settings.images / "experiment-retrieval.png"),
    }
    base = settings.page.parent if settings.page is not None else settings.out
    block = tables(results, {key: relative(path, base) for key, path in images.items()})
    results["total_seconds"] = time.perf_counter() - started
    (settings.out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (settings.out / "tables.md").write_text(block + "\n", encoding="utf-8")
    if settings.page is not None:
        write_docs_table(settings.page, counts_summary(counts))
        write_docs_table(settings.page, block, markers=(BEGIN, END))
    return results


def relative(path: Path, base: Path) -> str:
    """`path` as a link from a page in `base` (../ where needed)."""
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def machine() -> str:
    return f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred pairs, a tiny model (a pipeline check)")
    parser.add_argument("--tokens", type=int, help=f"input tokens per run (default {Settings.tokens:,})")
    parser.add_argument("--out", type=Path, help="work directory (default runs/experiment, --quick: -quick)")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ alone: plots and tables under --out")
    parser.add_argument("--vocab-dir", type=Path, help="codes_enfr + vocab_enfr (default: XLM_ENFR_VOCAB)")
    args = parser.parse_args(argv)
    settings = Settings(**QUICK) if args.quick else Settings()
    if args.tokens is not None:
        if args.tokens < 1:
            parser.error("--tokens must be >= 1")
        settings.tokens = args.tokens
    if args.out is not None:
        settings.out = args.out
    if args.vocab_dir is not None:
        settings.vocab_dir = args.vocab_dir
    if args.quick or args.no_docs:
        settings.images, settings.page = settings.out / "img", None
    command = " ".join(["python scripts/experiment.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        results = run_experiment(settings, command)
    except XLMError as err:
        print(f"experiment: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print((settings.out / "tables.md").read_text(encoding="utf-8"))
    print(f"{results['total_seconds'] / 60:.1f} minutes; results in {settings.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
