#!/usr/bin/env python
"""DRAFT, AWAITING THE TRAINER: written against the interfaces of xlm/data.py, xlm/objectives.py and xlm/train.py
(branches `data` and `train`), which this branch does not have yet. No test imports it. It also needs matplotlib
(not yet a dependency: to add as an extra when this runs). One `--quick` run went through end to end (2 layers,
64 wide, 400 pairs a split: 14 minutes wall, 4.4 CPU-minutes, on the busy shared 2 cores) on the `train` branch's
code with this branch's modules copied beside it: the pipeline holds together; its figures mean nothing at that
size. The full run's token budget is not calibrated yet.

The experiment of docs/experiments.md: does TLM align English and French?

    python scripts/experiment.py                      # corpus, prepare, three runs, measurements, plots, the table
    python scripts/experiment.py --quick              # seconds: a few hundred pairs, a tiny model (pipeline check)

1. The corpus: real English-French translations from the system's gettext catalogs (xlm/gettext_corpus.py),
   split by catalog into train / valid / test.
2. `xlm prepare` (xlm.data.prepare) binarizes each split with the real enfr BPE vocabulary.
3. Three models of one small architecture (4 layers, 256 wide), trained the same way (same seed, optimizer,
   batch shapes) on the same number of input tokens, differing only in the objective:
   CLM (en, fr); MLM (en, fr); MLM + TLM (en, fr, en-fr). Checkpoints along the way give the curves.
4. Measurements on the test catalogs: per-language perplexity (causal for CLM, masked for the others), masked-token
   accuracy, cross-lingual retrieval en->fr and fr->en among all test pairs (xlm/retrieval.py; chance 1/M) next to
   two baselines on the same candidates (the untrained model, a bag of BPE pieces), and masked-token accuracy on
   English (French) with and without the translation beside it.
5. Plots under docs/img/ and the table between the markers of docs/experiments.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from xlm.train import TrainConfig, eval_batches, predictions, train

from xlm import data, objectives
from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS, from_hf_config
from xlm.gettext_corpus import LOCALE_DIR, SPLITS, build_corpus, default_enfr_vocab_dir, enfr_tokenizer, write_corpus
from xlm.model import XLM
from xlm.retrieval import bag_of_pieces, retrieval, sentence_embeddings

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = REPO_ROOT / "docs" / "experiments.md"
IMAGES = REPO_ROOT / "docs" / "img"
BEGIN, END = "<!-- experiment.py: begin -->", "<!-- experiment.py: end -->"

RUNS = {  # name -> (clm steps, mlm steps)
    "CLM": (["en", "fr"], []),
    "MLM": ([], ["en", "fr"]),
    "MLM + TLM": ([], ["en", "fr", "en-fr"]),
}


@dataclasses.dataclass
class Settings:
    """What the three runs share. tokens: the input-token budget of each run (every run reads as many)."""

    out: Path = REPO_ROOT / "runs" / "experiment"
    tokens: int = 3_000_000  # TO CALIBRATE: about 20 minutes of the slowest run (CLM: its head sees every token)
    n_layers: int = 4
    dim: int = 256
    n_heads: int = 8
    batch_size: int = 16
    bptt: int = 128
    max_len: int = 100
    optimizer: str = "adam_inverse_sqrt,lr=0.0005,beta1=0.9,beta2=0.98,warmup_updates=200"
    checkpoints: int = 10  # checkpoints per run, for the curves
    seed: int = 0
    max_pairs: int | None = None  # --quick: keep the first pairs of each split only


# ---- 1-2. corpus and prepared data ----------------------------------------------------------------------------


def make_data(settings: Settings) -> tuple[Path, Path, dict]:
    """Corpus text files, the tokenizer directory and the prepared splits; returns (prepared, tokenizer, counts)."""
    tokenizer = enfr_tokenizer(default_enfr_vocab_dir())
    corpus = build_corpus(LOCALE_DIR, seed=settings.seed)
    if settings.max_pairs is not None:
        for split in corpus.splits.values():
            split.pairs = split.pairs[: settings.max_pairs]
    text = settings.out / "corpus"
    counts = write_corpus(corpus, text, tokenizer=tokenizer, workers=2)
    tokenizer_dir = tokenizer.save_pretrained(settings.out / "tokenizer")
    prepared = settings.out / "prepared"
    for split in SPLITS:
        data.prepare(
            prepared,
            tokenizer,
            mono={lang: text / f"{split}.{lang}" for lang in ("en", "fr")},
            para={("en", "fr"): (text / f"{split}.en-fr.en", text / f"{split}.en-fr.fr")},
            split=split,
            workers=2,
            force=True,
        )
    return prepared, tokenizer_dir, counts


def model_config_file(settings: Settings) -> Path:
    """transformers' config.json of the small architecture: xlm-mlm-enfr-1024's vocabulary and languages."""
    config = dataclasses.replace(
        PRESETS["xlm-mlm-enfr-1024"], n_layers=settings.n_layers, dim=settings.dim, n_heads=settings.n_heads
    )
    path = settings.out / "model-config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_hf_config(), indent=2) + "\n", encoding="utf-8")
    return path


# ---- 3. the runs: one token budget --------------------------------------------------------------------------


def tokens_per_step(settings: Settings, prepared: Path, clm: list[str], mlm: list[str]) -> float:
    """Expected input tokens of one optimizer step of a run.

    A stream step reads batch_size x bptt tokens; a TLM step batch_size pairs of (len1 + len2 + 4) tokens on
    average. The trainer draws, per iteration, min(5, n) monolingual steps and min(5, n) parallel steps
    (the original's shuf_order), so the mix is known.
    """
    stream = settings.batch_size * settings.bptt
    steps = clm or mlm
    mono = [lang for lang in steps if "-" not in lang]
    para = [lang for lang in steps if "-" in lang]
    if not para:
        return float(stream)
    pairs = data.open_prepared(prepared, "train", None).para[("en", "fr")]
    lengths1, lengths2 = pairs.first.lengths, pairs.second.lengths
    kept = (lengths1 > 0) & (lengths2 > 0) & (lengths1 <= settings.max_len) & (lengths2 <= settings.max_len)
    row = float(np.mean(lengths1[kept] + lengths2[kept] + 4))
    n_mono, n_para = min(5, len(mono)), min(5, len(para))
    return (n_mono * stream + n_para * settings.batch_size * row) / (n_mono + n_para)


def run_config(settings: Settings, name: str, prepared: Path, tokenizer_dir: Path) -> TrainConfig:
    clm, mlm = RUNS[name]
    steps = math.ceil(settings.tokens / tokens_per_step(settings, prepared, clm, mlm))
    every = max(1, steps // settings.checkpoints)
    return TrainConfig(
        data=str(prepared), out=str(settings.out / name.replace(" + ", "-").lower()), clm=clm, mlm=mlm,
        model_config=str(model_config_file(settings)), tokenizer=str(tokenizer_dir), optimizer=settings.optimizer,
        steps=steps, batch_size=settings.batch_size, bptt=settings.bptt, max_len=settings.max_len,
        eval_every=every, save_every=every, seed=settings.seed, progress=True,
    )  # fmt: skip


# ---- 4. measurements ------------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity_and_accuracy(model: XLM, cfg: TrainConfig, test: data.PreparedData, objective: str, lang: str):
    """(perplexity, accuracy %) of one objective on one test corpus; masks seeded with 0, as the trainer's."""
    corpus = test.mono[lang] if "-" not in lang else test.para[tuple(lang.split("-"))]
    generator = torch.Generator().manual_seed(0)
    options = {"mask_id": model.config.mask_id, "vocab_size": model.config.vocab_size}
    loss_sum = count = correct = 0.0
    model.eval()
    for batch in eval_batches(cfg, model, corpus, objective, lang):
        if objective == "mlm":
            batch = objectives.mask_batch(batch, generator, **options)
        logits, targets = predictions(model, objective, batch)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += targets.numel()
        correct += (logits.argmax(-1) == targets).sum().item()
    return math.exp(loss_sum / count), 100.0 * correct / count


def framed_test_pairs(test: data.PreparedData) -> dict[str, list[list[int]]]:
    """The test pairs' sentences, framed `</s> ... </s>` as in training: {"en": [...], "fr": [...]}, aligned."""
    pairs = test.para[("en", "fr")]
    return {
        lang: [[1, *corpus.sentence(i).tolist(), 1] for i in range(len(corpus))]
        for lang, corpus in (("en", pairs.first), ("fr", pairs.second))
    }


def model_retrieval(model: XLM, sentences: dict[str, list[list[int]]], causal: bool) -> dict[str, float]:
    """Retrieval en->fr and fr->en with mean-pooled last layers, plain cosine and centred (xlm/retrieval.py)."""
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


@torch.no_grad()
def accuracy_with_and_without_translation(
    model: XLM, sentences: dict[str, list[list[int]]], masked: str, *, rate: float = 0.15, batch_size: int = 64
) -> tuple[float, float]:
    """Masked-token accuracy (%) on the `masked` language's sentences, (with, without) the translation beside.

    The same positions are masked (replaced by the mask id, all of them: no keep/random) in both conditions:
    with, the row is the TLM pair `</s> a </s> </s> b </s>` (xlm.data.concat_pairs), the masks in `a` only;
    without, the row is `</s> a </s>` alone. Drawn from a generator seeded with 0.
    """
    other = "fr" if masked == "en" else "en"
    lang_ids = (model.config.lang2id[masked], model.config.lang2id[other])
    generator = torch.Generator().manual_seed(0)
    hits = {"with": 0, "without": 0}
    total = 0
    model.eval()
    for start in range(0, len(sentences[masked]), batch_size):
        first = [s[1:-1] for s in sentences[masked][start : start + batch_size]]  # unframed: concat_pairs frames
        second = [s[1:-1] for s in sentences[other][start : start + batch_size]]
        pair = data.concat_pairs(first, second, lang_ids, eos_id=1, pad_id=2)
        lengths = torch.tensor([len(a) for a in first])  # (B,)
        alone = torch.full((len(first), int(lengths.max()) + 2), 2, dtype=torch.long)  # (B, T'): </s> a </s> <pad>..
        for row, a in enumerate(first):
            alone[row, : len(a) + 2] = torch.tensor([1, *a, 1])
        columns = torch.arange(alone.size(1))[None, :]  # (1, T')
        chosen = (columns >= 1) & (columns <= lengths[:, None])  # (B, T'): the tokens of `a`
        chosen &= torch.rand(chosen.shape, generator=generator) < rate
        pair_mask = torch.zeros_like(pair.input_ids, dtype=torch.bool)  # (B, T): `a` sits at the same columns
        pair_mask[:, : alone.size(1)] = chosen
        h = model.encode(
            pair.input_ids.masked_fill(pair_mask, model.config.mask_id), pair.langs, causal=False,
            attention_mask=pair.attention_mask, positions=pair.positions,
        )  # fmt: skip
        hits["with"] += (model.logits(h[pair_mask]).argmax(-1) == pair.input_ids[pair_mask]).sum().item()
        h = model.encode(alone.masked_fill(chosen, model.config.mask_id), lang_ids[0], causal=False)  # (B, T', C)
        hits["without"] += (model.logits(h[chosen]).argmax(-1) == alone[chosen]).sum().item()
        total += int(chosen.sum())
    return 100.0 * hits["with"] / total, 100.0 * hits["without"] / total


def measure(name: str, model: XLM, cfg: TrainConfig, test: data.PreparedData, sentences: dict) -> dict:
    """Every figure of the table for one model on the test split."""
    clm, _ = RUNS[name]
    figures: dict = {"run": name}
    for lang in ("en", "fr"):
        objective = "clm" if clm else "mlm"
        figures[f"{lang} ppl"], figures[f"{lang} acc"] = perplexity_and_accuracy(model, cfg, test, objective, lang)
    figures["retrieval"] = model_retrieval(model, sentences, causal=bool(clm))
    if not clm:
        for lang in ("en", "fr"):
            figures[f"{lang} acc with/without translation"] = accuracy_with_and_without_translation(
                model, sentences, lang
            )
    return figures


def checkpoints_of(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in run_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found)


# ---- 5. plots and the page ------------------------------------------------------------------------------------


def input_tokens(record: dict, settings: Settings, word_pred: float = 0.15) -> float:
    """Input tokens read by one training step: a stream batch, or (TLM) its predicted tokens / word_pred."""
    if "-" not in record["lang"]:
        return settings.batch_size * settings.bptt
    return record["tokens"] / word_pred


def plot_losses(runs: dict[str, list[dict]], settings: Settings) -> Path:
    """Training and validation loss (nats per predicted token) against input tokens seen, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, records), colour in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green"), strict=False):
        seen, xs, ys, valid_x, valid_y = 0.0, [], [], [], []
        for record in records:
            if "loss" in record:
                seen += input_tokens(record, settings)
                xs.append(seen)
                ys.append(record["loss"])
            elif record.get("split") == "valid":
                ppls = [v for k, v in record.items() if k.endswith("_ppl") and "en_fr" not in k]  # en, fr only
                valid_x.append(seen)
                valid_y.append(float(np.mean(np.log(ppls))))
        window = max(1, len(ys) // 50)  # a moving average: single steps alternate objectives and languages
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
        ax.plot(xs[window - 1 :], smooth, color=colour, alpha=0.6, label=f"{name}: training (moving average)")
        ax.plot(valid_x, valid_y, "o-", color=colour, label=f"{name}: validation (en, fr)")
    ax.set_xlabel("input tokens seen")
    ax.set_ylabel("loss (nats per predicted token)")
    ax.set_title("Training and validation loss (CLM: next token; MLM, TLM: masked tokens)")
    ax.legend(fontsize="small")
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / "experiment-loss.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_retrieval(curves: dict[str, list[tuple[int, float]]], floors: dict[str, float], chance: float) -> Path:
    """Retrieval accuracy en->fr (%) against training step, with the baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [100 * a for _, a in points], "o-", label=name)
    for (name, value), style in zip(floors.items(), ("--", "-."), strict=False):
        ax.axhline(100 * value, linestyle=style, color="grey", label=f"{name} ({100 * value:.1f}%)")
    ax.axhline(100 * chance, linestyle=":", color="black", label=f"chance ({100 * chance:.3f}%)")
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("retrieval accuracy en→fr (%)")
    ax.set_title("Cross-lingual retrieval on the test catalogs")
    ax.legend(fontsize="small")
    path = IMAGES / "experiment-retrieval.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def results_table(results: list[dict], untrained: dict, pieces: dict) -> str:
    """The page's table. ppl and acc: causal (next token) for CLM, masked tokens for the others."""
    columns = ["model", "en ppl", "fr ppl", "en acc %", "fr acc %", "en→fr %", "fr→en %", "en→fr centred %"]
    columns.append("en acc with / without fr %")
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|--:" * (len(columns) - 1) + "|"]
    for r in results:
        with_without = r.get("en acc with/without translation")
        tlm = f"{with_without[0]:.1f} / {with_without[1]:.1f}" if with_without else "—"
        ret = r["retrieval"]
        lines.append(
            f"| {r['run']} | {r['en ppl']:.1f} | {r['fr ppl']:.1f} | {r['en acc']:.1f} | {r['fr acc']:.1f} | "
            f"{100 * ret['en->fr']:.1f} | {100 * ret['fr->en']:.1f} | {100 * ret['en->fr centred']:.1f} | {tlm} |"
        )
    u = untrained["retrieval"]
    lines.append(
        f"| untrained | | | | | {100 * u['en->fr']:.1f} | {100 * u['fr->en']:.1f} | {100 * u['en->fr centred']:.1f} | |"
    )
    lines.append(f"| bag of BPE pieces | | | | | {100 * pieces['en->fr']:.1f} | {100 * pieces['fr->en']:.1f} | | |")
    lines.append(f"\nChance: {100 * pieces['chance']:.3f}% ({u['candidates']:,} candidates).")
    return "\n".join(lines)


def write_page(table: str) -> None:
    text = PAGE.read_text(encoding="utf-8")
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    PAGE.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


# ---- the whole experiment -------------------------------------------------------------------------------------


def run_experiment(settings: Settings) -> str:
    prepared, tokenizer_dir, _ = make_data(settings)
    test = data.open_prepared(prepared, "test", None)
    sentences = framed_test_pairs(test)
    results, curves, logs = [], {}, {}
    for name in RUNS:
        cfg = run_config(settings, name, prepared, tokenizer_dir)
        result = train(cfg)
        logs[name] = result.records
        causal = bool(RUNS[name][0])
        curves[name] = [
            (step, model_retrieval(load_pretrained(path), sentences, causal)["en->fr"])
            for step, path in checkpoints_of(Path(cfg.out))
        ]
        results.append(measure(name, load_pretrained(result.checkpoint), cfg, test, sentences))
    torch.manual_seed(settings.seed)  # the runs' own initial weights (xlm.train.build_model)
    untrained_model = XLM(from_hf_config(model_config_file(settings)))
    untrained = {"retrieval": model_retrieval(untrained_model, sentences, causal=False)}
    pieces = pieces_retrieval(sentences, untrained_model.config.vocab_size)
    plot_losses(logs, settings)
    plot_retrieval(
        curves,
        {"untrained model": untrained["retrieval"]["en->fr"], "bag of BPE pieces": pieces["en->fr"]},
        pieces["chance"],
    )
    table = results_table(results, untrained, pieces)
    (settings.out / "results.json").write_text(
        json.dumps({"runs": results, "untrained": untrained, "pieces": pieces}, indent=2), encoding="utf-8"
    )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="a few hundred pairs, a tiny model: seconds")
    parser.add_argument("--tokens", type=int, help="input tokens per run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write-docs", action="store_true", help=f"put the table into {PAGE.name}")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.quick:
        settings = dataclasses.replace(
            settings, tokens=60_000, n_layers=2, dim=64, max_pairs=400, checkpoints=2,
            optimizer="adam_inverse_sqrt,lr=0.001,beta1=0.9,beta2=0.98,warmup_updates=10",
        )  # fmt: skip
    if args.tokens:
        settings.tokens = args.tokens
    if args.out:
        settings.out = args.out
    table = run_experiment(settings)
    print(table)
    if args.write_docs:
        write_page(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
