#!/usr/bin/env python
"""xlm against transformers on one machine: decoding, the weights-sweep bound, forwards, loading, scoring, tokenizing.

    PYTHONPATH=. python scripts/bench.py --json bench.json --write-docs    # the table of docs/performance.md
    PYTHONPATH=. python scripts/bench.py --quick                             # a smoke run: few repeats

Both implementations run the same synthetic full-size xlm-clm-enfr-1024 (seeded random weights that transformers
writes, `xlm.synthetic.synthetic_checkpoint`) on the same inputs, with the same number of threads (default 2).
Every measurement is warmed up, repeated, and reported as a median; the contenders take turns within each
repeat, so that a slow spell of a shared machine hits all of them (memory bandwidth drifts by ~30% over
minutes on a VM). The weights sweep (reading every weight tensor once: `t.sum()` over the parameters) is
measured right before each of our decoding runs, and each decoding step is reported as a multiple of it.

Figures (docs/performance.md says what bounds each):
- the machine's bounds, in the same run: the weights sweep, and the GFLOP/s of the best library GEMM on each of
  the model's product shapes at 8, 16, 512, 1024 and 2048 rows, fp32 and bf16 (`bench_bounds`); forwards and
  batched decoding steps are reported as fractions of the time their products take at those rates
  (`gemm_bound_seconds`);
- greedy decoding, prompt 16, 64 new tokens, batch 1, 8 and 16 (transformers at 1 and 8): ms per step =
  (time(64 tokens) - time(1)) / 63.
  transformers: `generate(use_cache=False)` (correct, recomputes everything) and `generate()` (cached, but
  with wrong tokens: it feeds a dummy mask token, see docs/usage.md); xlm: plain, `--fast` (xlm/fast.py: its
  kernels, and decoding steps of up to 16 rows in one C++ call), fp32 and bf16 (`--fast --compile` changes only
  batches over 16 rows, which the bench does not run);
- forward latency, all-position logits, causal (transformers with `config.causal = True`), 1x16, 8x128, 1x512;
  the max |logits difference| against transformers;
- load to first logits in a fresh process, and its peak RSS over a bare `import torch` process;
- corpus scoring tokens/s (`corpus_perplexity`; transformers: the same batches through its forward);
- tokenizer sentences/s (scripts/bench_tokenizer.py; skipped without the enfr BPE files, XLM_ENFR_VOCAB);
- bf16 against fp32: top-1 agreement and max |logits difference| on an 8x128 batch;
- `--only bounds` and `--only forward`: the bounds alone, or the bounds and the forwards (printed, not written to
  the docs);
- `--only train`, a section run on its own: one full training step (forward, backward, optimizer), batch 8 x 256,
  fp32 and bf16 autocast, xlm's (xlm/train.py) against transformers' XLMWithLMHeadModel: tokens/s, the losses of
  every step, peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `python scripts/bench.py` from a checkout, like the other scripts

from xlm import fast  # noqa: E402
from xlm.checkpoint import load_pretrained  # noqa: E402
from xlm.config import PRESETS  # noqa: E402
from xlm.generation import Decoder, generate  # noqa: E402
from xlm.inputs import right_pad  # noqa: E402
from xlm.scoring import corpus_perplexity, length_batches  # noqa: E402
from xlm.synthetic import import_transformers, save_synthetic_checkpoint, synthetic_checkpoint  # noqa: E402

PRESET = "xlm-clm-enfr-1024"
DOCS = REPO_ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench.py: begin -->", "<!-- bench.py: end -->"
PROMPT = 16
FORWARD_SHAPES = ((1, 16), (8, 128), (1, 512))


@dataclasses.dataclass
class Settings:
    threads: int = 2
    repeats: int = 3  # decoding, loading, scoring
    forward_repeats: int = 5
    new_tokens: int = 64
    batches: tuple[int, ...] = (1, 8, 16)
    theirs_batches: tuple[int, ...] = (1, 8)  # transformers' uncached generate at 16 rows: ~3 minutes, no new fact
    gemm_rows: tuple[int, ...] = (8, 16, 512, 1024, 2048)  # decoding 8, 16; forwards 1x16, 1x512, 8x128; training
    bound_repeats: int = 3
    scoring_sentences: int = 48
    tokenizer_lines: int = 10_000
    small: bool = False  # a scaled-down model: checks the script end to end, its figures mean nothing


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def take_turns(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every contender once per repeat, in turn; each returns its own measurement."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            results[name].append(measure())
    return results


# --- The models ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ours:
    """One of our configurations: a model, the decoder `generate` gets, and whether forwards run under
    `fast.kernels()`."""

    model: torch.nn.Module
    decoder: Decoder
    fast: bool = False

    def kernels(self) -> contextlib.AbstractContextManager:
        return fast.kernels() if self.fast else contextlib.nullcontext()


@dataclasses.dataclass
class Models:
    path: Path
    ours: dict[str, Ours]  # "fp32", "fp32 fast", "fp32 fast+compile", the same in bf16
    theirs: torch.nn.Module  # transformers' XLMWithLMHeadModel, fp32, causal
    vocab_size: int


def checkpoint(settings: Settings, scratch: Path) -> Path:
    if not settings.small:
        return synthetic_checkpoint(PRESET)
    small = dataclasses.replace(PRESETS[PRESET], vocab_size=512, dim=64, n_layers=2)
    return save_synthetic_checkpoint(small, scratch / PRESET)


def load_models(path: Path, *, compiled: bool = True, theirs: bool = True) -> Models:
    """Our configurations in fp32 and bf16 (the `+compile` ones if `compiled`), and transformers' if `theirs`."""
    ours = {}
    for dtype in ("fp32", "bf16"):
        load = functools.partial(load_pretrained, path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
        ours[dtype] = Ours(load(), Decoder())
        ours[f"{dtype} fast"] = Ours(aligned(load()), fast.FastDecoder(), fast=True)
        if compiled:  # a decoder compiling decode_one, on a model built with the attention Inductor fuses
            decoder = fast.FastDecoder(compile_decoding=True)
            ours[f"{dtype} fast+compile"] = Ours(aligned(load(attention="reference")), decoder, fast=True)
    return Models(path, ours, load_theirs(path) if theirs else None, ours["fp32"].model.config.vocab_size)


def load_theirs(path: Path) -> torch.nn.Module:
    """transformers' XLMWithLMHeadModel, fp32, causal."""
    transformers = import_transformers()
    transformers.utils.logging.set_verbosity_error()
    model = transformers.XLMWithLMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
    model.transformer.causal = True  # the hub config says false; the CLM is causal (docs/parity.md)
    return model


def aligned(model):
    fast.align_weights(model)  # what `xlm --fast` does
    return model


def random_ids(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """`</s>` then ids from [14, V): no special ids (transformers would take a stray `<pad>` for padding)."""
    ids = torch.randint(14, vocab_size, shape, generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1
    return ids


# --- Decoding and the weights sweep -------------------------------------------------------------------------


def sweep(params: list[torch.Tensor], repeats: int = 3) -> float:
    """Seconds to read every weight once (median of `repeats`): what a batch-1 decoding step cannot beat."""
    return median([timed(lambda: [p.sum() for p in params]) for _ in range(repeats)])


def xlm_decoder(ours: Ours, ids: torch.Tensor) -> Callable[[int], object]:
    return lambda n: generate(ours.model, ids, 0, max_new_tokens=n, stop_at_eos=False, decoder=ours.decoder)


def transformers_decoder(model, ids: torch.Tensor, use_cache: bool) -> Callable[[int], object]:
    mask = torch.ones_like(ids)

    def run(n: int):  # no langs: generate() cannot grow them (the language embedding costs nothing anyway)
        with torch.no_grad():
            return model.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache,
                pad_token_id=2,
            )  # fmt: skip

    return run


def measure_step(decode: Callable[[int], object], n: int) -> float:
    """Seconds per decoding step, end to end: (time of `generate` for n tokens - time for 1) / (n - 1)."""
    return (timed(lambda: decode(n)) - timed(lambda: decode(1))) / (n - 1)


@torch.no_grad()
def steps_against_sweeps(ours: Ours, ids: torch.Tensor, steps: int) -> list[tuple[float, float]]:
    """(sweep, step) pairs, taking turns: a weights sweep, then one decoding step (generate's step function and
    the greedy choice of the token). The memory bandwidth of a shared VM moves on a scale of seconds, so the
    ratio is taken between neighbours, ~30 ms apart."""
    B, T = ids.shape
    model, decoder = ours.model, ours.decoder
    params = list(model.parameters())
    mask, real, lang = torch.ones_like(ids, dtype=torch.bool), torch.ones(B, dtype=torch.bool), torch.zeros_like(ids)
    cache = model.new_cache(B, T + steps + 1)  # as in generate, never full: a full one is another compiled case
    logits = decoder.prefill(model, ids, lang, mask, cache)
    lang = torch.zeros(B, dtype=torch.long)  # contiguous, as generate's: a compiled step would recompile otherwise
    pairs = []
    for i in range(steps):
        swept = sweep(params, repeats=1)
        start = time.perf_counter()
        token = logits.argmax(dim=-1)
        logits = decoder.step(model, token, lang, cache, slot=T + i, position=torch.full((B,), T + i), real=real)
        pairs.append((swept, time.perf_counter() - start))
    return pairs


def bench_decode(models: Models, settings: Settings) -> list[dict]:
    """ms per greedy step of every contender, batch by batch; our steps also as multiples of the sweep."""
    rows = []
    for batch in settings.batches:
        ids = random_ids(models.vocab_size, (batch, PROMPT), seed=batch)
        runs: dict[str, Callable[[int], object]] = {}
        if batch in settings.theirs_batches:
            runs["transformers generate(use_cache=False)"] = transformers_decoder(models.theirs, ids, False)
            runs["transformers generate() [wrong tokens]"] = transformers_decoder(models.theirs, ids, True)
        for variant, ours in models.ours.items():
            if not (variant.endswith("+compile") and batch <= fast.FUSED_MAX_ROWS):  # (= "fast" there)
                runs[f"xlm {variant}"] = xlm_decoder(ours, ids)
        first_s = {name: timed(lambda decode=decode: decode(3)) for name, decode in runs.items()}  # warm-up
        contenders = {name: (lambda d=decode: measure_step(d, settings.new_tokens)) for name, decode in runs.items()}
        steps = take_turns(contenders, settings.repeats + 2 if batch == 1 else settings.repeats)
        pairs: dict[str, list[tuple[float, float]]] = {f"xlm {v}": [] for v in models.ours if f"xlm {v}" in runs}
        for _ in range(settings.repeats):  # the bound, in turns too
            for variant, ours in models.ours.items():
                if f"xlm {variant}" in pairs:
                    pairs[f"xlm {variant}"] += steps_against_sweeps(ours, ids, settings.new_tokens // 2)
        for name, values in steps.items():
            row = {"contender": name, "batch": batch, "ms_per_step": 1e3 * median(values)}
            row["tokens_per_s"] = batch * 1e3 / row["ms_per_step"]
            row["runs_ms"] = [1e3 * v for v in values]
            if name.endswith("+compile"):
                row["first_call_s"] = first_s[name]  # prefill + 2 steps, compilation included
            if name in pairs:
                row["step_ms"] = 1e3 * median([step for _, step in pairs[name]])
                row["sweep_ms"] = 1e3 * median([swept for swept, _ in pairs[name]])
                row["x_sweep"] = median([step / swept for swept, step in pairs[name]])
            rows.append(row)
        reference = [r["ms_per_step"] for r in rows if r["batch"] == batch and "use_cache=False" in r["contender"]]
        for row in rows:
            if row["batch"] == batch and reference:
                row["speedup_vs_transformers_no_cache"] = reference[0] / row["ms_per_step"]
    return rows


def weight_bytes(models: Models) -> dict[str, int]:
    return {dtype: sum(p.nbytes for p in models.ours[dtype].model.parameters()) for dtype in ("fp32", "bf16")}


# --- The machine's bounds: the weights sweep and GEMM throughput, at the model's shapes ------------------------
# Nearly all of a forward's time is matrix products y = x W^T + b, so its bound is the time those products take at
# the best throughput this machine's libraries reach on each of the model's shapes (per token: 4 L of (C, C), L of
# (F, C), L of (C, F), and the head (V, C) where logits are computed), measured in the same run as the contenders.
# Each measurement multiplies by the model's own weight tensors of that shape, cycled (all 24 (C, C) at few rows:
# the weights come from memory as in the model), up to GEMM_FLOP_BUDGET.

GEMM_FLOP_BUDGET = 16e9  # FLOP per measurement of one shape and row count (at least one product)


def gemm_kernels(dtype: torch.dtype) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], object]]:
    """The library kernels for x W^T + b on CPU that the bound takes the best of, by name.

    fp32: F.linear is MKL's sgemm; bf16: F.linear is torch's bf16 matmul, oneDNN with AVX512-BF16. `onednn` is
    oneDNN's linear on the same weights, `torch.ops.mkldnn._linear_pointwise` (xlm.fast.onednn_linear), both dtypes.
    """
    kernels = {"mkl" if dtype == torch.float32 else "matmul": torch.nn.functional.linear}
    if fast.ONEDNN:
        kernels["onednn"] = fast.onednn_linear
    return kernels


def model_products(model: torch.nn.Module) -> dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """The model's matrix products by weight shape (O, I): [(weight, bias)], every nn.Linear, then the tied head."""
    products: dict[tuple[int, int], list] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            products.setdefault(tuple(module.weight.shape), []).append((module.weight, module.bias))
    head = model.embeddings.weight  # (V, C): the LM head multiplies by the embedding table
    products.setdefault(tuple(head.shape), []).append((head, model.output_bias))
    return products


@torch.no_grad()
def bench_bounds(models: dict[str, torch.nn.Module], settings: Settings) -> dict:
    """GFLOP/s of each kernel of `gemm_kernels` per (dtype, shape, rows), and the weights sweep of each dtype.

    models: {"fp32": model, "bf16": model}, plain. Every measurement (a kernel on one shape and row count, or a
    sweep) takes its turn in each of `bound_repeats` rounds; each figure is a median.
    """
    contenders: dict[str, Callable[[], float]] = {}
    entries = []
    for dtype, model in models.items():
        products = model_products(model)
        head = tuple(model.embeddings.weight.shape)
        for (out_features, in_features), pairs in products.items():
            for rows in settings.gemm_rows:
                x = torch.randn(rows, in_features).to(pairs[0][0].dtype)  # (rows, I)
                flop = 2 * rows * out_features * in_features
                used = pairs[: max(1, int(GEMM_FLOP_BUDGET // flop))]
                entry = {"dtype": dtype, "out": out_features, "in": in_features, "per_token": len(pairs), "rows": rows}
                entry.update(head=(out_features, in_features) == head, flop=flop * len(used), keys={})
                for name, kernel in gemm_kernels(x.dtype).items():
                    if flop < 1e9:  # a first call sets up the kernel for the shape (~ms): not timed
                        kernel(x, *used[0])
                    key = f"{dtype} {out_features}x{in_features} {rows} {name}"
                    contenders[key] = lambda k=kernel, x=x, used=used: timed(lambda: [k(x, w, b) for w, b in used])
                    entry["keys"][name] = key
                entries.append(entry)
        params = list(model.parameters())
        contenders[f"sweep {dtype}"] = lambda params=params: sweep(params)
    times = take_turns(contenders, settings.bound_repeats)
    for entry in entries:
        keys = entry.pop("keys")
        entry["gflops"] = {name: entry["flop"] / median(times[key]) / 1e9 for name, key in keys.items()}
        entry["kernel"] = max(entry["gflops"], key=entry["gflops"].get)
        entry["best_gflops"] = entry["gflops"][entry["kernel"]]
    sweeps = {}
    for dtype, model in models.items():
        seconds, nbytes = median(times[f"sweep {dtype}"]), sum(p.nbytes for p in model.parameters())
        sweeps[dtype] = {"ms": 1e3 * seconds, "bytes": nbytes, "gb_per_s": nbytes / seconds / 1e9}
    return {"gemm": entries, "sweep": sweeps}


def gemm_bound_seconds(bounds: dict, rows: int, dtype: str, *, head_rows: int | None = None) -> float:
    """Seconds the model's matrix products on `rows` positions take at the best measured throughput of each shape.

    bounds: `bench_bounds`'s result; dtype "fp32" or "bf16". Per position: 4 L (C, C), L (F, C), L (C, F); the
    head (V, C) on `head_rows` positions (default `rows`; 0 where no logits are computed, e.g. the positions an
    MLM step does not predict). A forward's time can only approach this from above, so bound / measured is the
    fraction of the bound reached. Throughput at a row count between two measured ones is interpolated linearly;
    outside the measured range: ValueError. Backward products (a training step) are other shapes: not included.
    """
    head_rows = rows if head_rows is None else head_rows
    shapes: dict[tuple[int, int], list[dict]] = {}
    for entry in bounds["gemm"]:
        if entry["dtype"] == dtype:
            shapes.setdefault((entry["out"], entry["in"]), []).append(entry)
    if not shapes:
        raise ValueError(f"no GEMM throughput measured in {dtype}")
    seconds = 0.0
    for (out_features, in_features), entries in shapes.items():
        n = head_rows if entries[0]["head"] else rows
        if n:
            flop = 2 * n * out_features * in_features * entries[0]["per_token"]
            seconds += flop / (1e9 * interpolated_gflops(entries, n))
    return seconds


def arithmetic_bound_seconds(bounds: dict, rows: int, dtype: str) -> float:
    """Seconds the model's products on `rows` positions take at the best throughput measured for each shape at
    any row count (the big products run near the FMA peak): what a step of `rows` rows cannot beat even with its
    weights in cache. A decoding step's bound is the larger of this and the weights sweep."""
    best: dict[tuple[int, int], dict] = {}
    for entry in bounds["gemm"]:
        shape = (entry["out"], entry["in"])
        if entry["dtype"] == dtype and entry["best_gflops"] > best.get(shape, {}).get("best_gflops", 0.0):
            best[shape] = entry
    return sum(2 * rows * e["out"] * e["in"] * e["per_token"] / (1e9 * e["best_gflops"]) for e in best.values())


def interpolated_gflops(entries: list[dict], rows: int) -> float:
    """The best GFLOP/s at `rows`, linear between the two nearest measured row counts."""
    measured = sorted((e["rows"], e["best_gflops"]) for e in entries)
    for (r0, g0), (r1, g1) in zip(measured, [*measured[1:], measured[-1]], strict=True):
        if r0 <= rows <= r1:
            return g0 if r1 == r0 else g0 + (g1 - g0) * (rows - r0) / (r1 - r0)
    raise ValueError(f"GEMM throughput measured at {measured[0][0]}-{measured[-1][0]} rows, not at {rows}")


def add_bound_fractions(report: dict) -> None:
    """Each forward, and each batched decoding step of ours, against its GEMM bound (`gemm_bound_seconds` at its
    rows and dtype): `gemm_bound_ms`, and `of_gemm_bound` = bound / measured. Each of our decoding steps also
    against its arithmetic (`arithmetic_bound_seconds`): `arithmetic_ms`, and `x_bound` = step / max(sweep,
    arithmetic)."""
    for row in report.get("forward", []):
        batch, width = (int(n) for n in row["shape"].split("x"))
        row["gemm_bound_ms"] = 1e3 * gemm_bound_seconds(report["bounds"], batch * width, dtype_of(row["contender"]))
        row["of_gemm_bound"] = row["gemm_bound_ms"] / row["ms"]
    measured = {entry["rows"] for entry in report["bounds"]["gemm"]}
    for row in report.get("decode", []):
        if "step_ms" in row and row["batch"] in measured:
            row["gemm_bound_ms"] = 1e3 * gemm_bound_seconds(report["bounds"], row["batch"], dtype_of(row["contender"]))
            row["of_gemm_bound"] = row["gemm_bound_ms"] / row["step_ms"]
        if "step_ms" in row:
            arithmetic = arithmetic_bound_seconds(report["bounds"], row["batch"], dtype_of(row["contender"]))
            row["arithmetic_ms"] = 1e3 * arithmetic
            row["x_bound"] = row["step_ms"] / max(row["sweep_ms"], row["arithmetic_ms"])


def dtype_of(contender: str) -> str:
    return "bf16" if " bf16" in contender else "fp32"


# --- Forward, scoring, precision ----------------------------------------------------------------------------


@torch.no_grad()
def bench_forward(models: Models, settings: Settings) -> list[dict]:
    """All-position logits, causal, per shape; max |logits difference| against transformers."""
    rows = []
    for batch, width in FORWARD_SHAPES:
        ids = random_ids(models.vocab_size, (batch, width), seed=width)
        langs = torch.zeros_like(ids)
        contenders: dict[str, Callable[[], torch.Tensor]] = {
            "transformers fp32": lambda ids=ids, langs=langs: models.theirs(input_ids=ids, langs=langs).logits
        }
        for variant, ours in models.ours.items():
            if not variant.endswith("+compile"):  # compilation changes decoding only
                contenders[f"xlm {variant}"] = lambda ours=ours, ids=ids: forward(ours, ids)
        reference = contenders["transformers fp32"]()
        deltas = {name: (fn().float() - reference).abs().max().item() for name, fn in contenders.items()}
        times = take_turns({k: (lambda fn=fn: timed(fn)) for k, fn in contenders.items()}, settings.forward_repeats)
        for name, values in times.items():
            ms = 1e3 * median(values)
            rows.append(
                {"shape": f"{batch}x{width}", "contender": name, "ms": ms, "max_abs_vs_transformers": deltas[name]}
            )
        base = next(r["ms"] for r in rows if r["shape"] == f"{batch}x{width}" and r["contender"] == "transformers fp32")
        for row in rows:
            if row["shape"] == f"{batch}x{width}":
                row["speedup_vs_transformers"] = base / row["ms"]
    return rows


def forward(ours: Ours, ids: torch.Tensor) -> torch.Tensor:
    with ours.kernels():
        return ours.model(ids, 0, causal=True)


def scoring_corpus(vocab_size: int, n: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 65, (n,), generator=generator).tolist()
    return [random_ids(vocab_size, (1, length), seed=i)[0].tolist() for i, length in enumerate(lengths)]


@torch.no_grad()
def transformers_corpus_logprob(model, sequences: list[list[int]], max_batch_tokens: int = 4096) -> float:
    """What a transformers user writes: the same batches, all-position logits, log_softmax, gather."""
    total = 0.0
    for batch in length_batches(sequences, max_batch_tokens):
        input_ids, mask = right_pad([sequences[i] for i in batch], 2)
        logits = model(input_ids=input_ids, attention_mask=mask.long(), langs=torch.zeros_like(input_ids)).logits
        logprobs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        total += logprobs[mask[:, 1:]].double().sum().item()
    return total


def bench_scoring(models: Models, settings: Settings) -> list[dict]:
    sequences = scoring_corpus(models.vocab_size, settings.scoring_sentences)
    tokens = sum(len(s) - 1 for s in sequences)
    contenders: dict[str, Callable[[], object]] = {
        "transformers fp32": lambda: transformers_corpus_logprob(models.theirs, sequences)
    }
    for variant, ours in models.ours.items():
        if not variant.endswith("+compile"):  # compilation changes decoding only
            contenders[f"xlm {variant}"] = lambda ours=ours: score(ours, sequences)
    times = take_turns({k: (lambda fn=fn: timed(fn)) for k, fn in contenders.items()}, settings.repeats)
    return [
        {"contender": name, "sentences": len(sequences), "tokens": tokens, "tokens_per_s": tokens / median(values)}
        for name, values in times.items()
    ]


def score(ours: Ours, sequences: list[list[int]]):
    with ours.kernels():
        return corpus_perplexity(ours.model, sequences, 0)


@torch.no_grad()
def bf16_agreement(models: Models, batch: int = 8, width: int = 128) -> dict:
    ids = random_ids(models.vocab_size, (batch, width), seed=7)
    exact = models.ours["fp32"].model(ids, 0, causal=True)
    low = models.ours["bf16"].model(ids, 0, causal=True).float()
    return {
        "batch": f"{batch}x{width}",
        "top1_agreement": (exact.argmax(-1) == low.argmax(-1)).float().mean().item(),
        "max_abs_logits": (exact - low).abs().max().item(),
        "mean_abs_logits": (exact - low).abs().mean().item(),
    }


# --- Loading in a fresh process -----------------------------------------------------------------------------

CHILD = """
import json, resource, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
imported = time.perf_counter()
ids = torch.randint(14, 100, (1, 16))
{load}
with torch.no_grad():
    logits = {forward}
done = time.perf_counter()
try:  # this process's peak: ru_maxrss would also count the parent's pages that fork copied before exec
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({{"import_torch_s": imported - start, "load_to_logits_s": done - imported, "maxrss_bytes": peak}}))
"""
LOADERS = {
    "import torch": ("pass", "None"),
    "xlm load_pretrained": (
        "from xlm.checkpoint import load_pretrained\nmodel = load_pretrained({path!r})",
        "model(ids, 0, causal=True)",
    ),
    "transformers from_pretrained": (
        "from transformers import XLMWithLMHeadModel\nmodel = XLMWithLMHeadModel.from_pretrained({path!r})",
        "model(input_ids=ids).logits",
    ),
}


def load_in_child(name: str, path: Path, threads: int) -> dict:
    load, forward = LOADERS[name]
    code = CHILD.format(threads=threads, load=load.format(path=str(path)), forward=forward)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start}


def bench_load(models: Models, settings: Settings) -> list[dict]:
    """Wall time from `python` to the first logits, and peak RSS above a bare `import torch` process."""
    runs = take_turns(
        {name: (lambda name=name: load_in_child(name, models.path, settings.threads)) for name in LOADERS},
        settings.repeats,
    )
    baseline = {key: median([r[key] for r in runs["import torch"]]) for key in ("maxrss_bytes", "process_s")}
    fp32_bytes = weight_bytes(models)["fp32"]
    rows = []
    for name, values in runs.items():
        row = {key: median([r[key] for r in values]) for key in values[0]}
        row["contender"] = name
        row["rss_over_torch_bytes"] = row["maxrss_bytes"] - baseline["maxrss_bytes"]
        row["rss_over_torch_x_weights"] = row["rss_over_torch_bytes"] / fp32_bytes
        row["seconds_over_torch"] = row["process_s"] - baseline["process_s"]
        rows.append(row)
    return rows


def bench_tokenizers(settings: Settings) -> dict:
    from scripts.bench_tokenizer import bench_tokenizer, default_enfr_vocab_dir

    vocab = default_enfr_vocab_dir()
    if not (vocab / "codes_enfr").is_file():
        return {"skipped": f"no codes_enfr in {vocab} (set XLM_ENFR_VOCAB)"}
    workers = (1,) if settings.small else (1, 2)
    return bench_tokenizer(vocab, settings.tokenizer_lines, workers, repeats=settings.repeats)


# --- The machine, the verdicts, the tables ------------------------------------------------------------------


def machine(settings: Settings) -> dict:
    transformers = import_transformers()
    cpu = platform.processor()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), cpu)
    config = torch.__config__.show()
    mkl, onednn = re.search(r"Library Version (\S+?)-", config), re.search(r"DNN (v[\d.]+)", config)
    versions = ([f"MKL {mkl.group(1)}"] if mkl else []) + ([f"oneDNN {onednn.group(1)}"] if onednn else [])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": settings.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "libraries": versions,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg(),
    }


def verdicts(report: dict) -> list[dict]:
    """The decode-bound acceptance criteria, measured on the fastest configuration; then the other
    configurations against the same targets, for information (docs/performance.md)."""

    def decode(contender: str, batch: int = 1) -> dict:
        return next(r for r in report["decode"] if r["contender"] == contender and r["batch"] == batch)

    forward = {r["contender"]: r for r in report["forward"] if r["shape"] == "8x128"}
    fastest = {dtype: min((r for name, r in forward.items() if name.startswith("xlm") and dtype_of(name) == dtype),
                          key=lambda r: r["ms"]) for dtype in ("fp32", "bf16")}  # fmt: skip
    load = {r["contender"]: r for r in report["load"]}
    fp32, bf16 = decode("xlm fp32 fast"), decode("xlm bf16 fast")
    no_cache = "vs transformers generate(use_cache=False)"
    checks = [
        (f"fp32 decode b1 (--fast) {no_cache}", fp32["speedup_vs_transformers_no_cache"], ">=", 2.5, "x"),
        ("fp32 decode b1 (--fast) / fp32 weights sweep", fp32["x_sweep"], "<=", 1.15, "x"),
        ("bf16 decode b1 (--fast) / bf16 weights sweep", bf16["x_sweep"], "<=", 1.2, "x"),
        (f"bf16 top-1 agreement with fp32, {report['bf16']['batch']}", report["bf16"]["top1_agreement"],
         ">=", 0.99, ""),
        ("forward 8x128 fp32 (--fast): transformers ms / ours", forward["xlm fp32 fast"]["speedup_vs_transformers"],
         ">=", 1.0, "x"),
        ("forward 8x128 fp32 (--fast) max abs logits difference vs transformers",
         forward["xlm fp32 fast"]["max_abs_vs_transformers"], "<=", 1e-5, ""),
        *[(f"{d} decode b{b} (--fast) / {d} weights sweep", decode(f"xlm {d} fast", b)["x_sweep"], "<=", 1.5, "x")
          for d in ("fp32", "bf16") for b in (8, 16)],
        *[(f"forward 8x128 {d}: GEMM bound / measured ({fastest[d]['contender']})", fastest[d]["of_gemm_bound"],
           ">=", target, "") for d, target in (("fp32", 0.7), ("bf16", 0.5))],
        ("load to first logits: transformers s / xlm s",
         load["transformers from_pretrained"]["process_s"] / load["xlm load_pretrained"]["process_s"], ">=", 1.0, "x"),
        ("peak RSS over import torch / fp32 weight bytes", load["xlm load_pretrained"]["rss_over_torch_x_weights"],
         "<=", 1.15, "x"),
    ]  # fmt: skip
    info = [
        (f"fp32 decode b1 (plain) {no_cache}", decode("xlm fp32")["speedup_vs_transformers_no_cache"], ">=", 2.5, "x"),
        ("fp32 decode b1 (plain) / fp32 weights sweep", decode("xlm fp32")["x_sweep"], "<=", 1.15, "x"),
        ("bf16 decode b1 (plain) / bf16 weights sweep", decode("xlm bf16")["x_sweep"], "<=", 1.2, "x"),
        ("forward 8x128 fp32 (plain): transformers ms / ours", forward["xlm fp32"]["speedup_vs_transformers"],
         ">=", 1.0, "x"),
        ("forward 8x128 fp32 (plain) max abs logits difference vs transformers",
         forward["xlm fp32"]["max_abs_vs_transformers"], "<=", 1e-5, ""),
        *[(f"{d} decode b{b}: arithmetic bound / {d} weights sweep (above 1.5: the 1.5x target is out of reach)",
           decode(f"xlm {d} fast", b)["arithmetic_ms"] / decode(f"xlm {d} fast", b)["sweep_ms"], "<=", 1.5, "x")
          for d in ("fp32", "bf16") for b in (8, 16)],
        *[(f"{d} decode b{b} (--fast) / max(weights sweep, arithmetic bound)", decode(f"xlm {d} fast", b)["x_bound"],
           "<=", 1.5, "x") for d in ("fp32", "bf16") for b in (8, 16)],
    ]  # fmt: skip
    return [
        {"check": name, "value": value, "target": f"{op} {target:g}{unit}", "info": kind == "info",
         "met": value >= target if op == ">=" else value <= target}
        for kind, rows in (("acceptance", checks), ("info", info))
        for name, value, op, target, unit in rows
    ]  # fmt: skip


def render(report: dict) -> str:
    """The markdown tables of docs/performance.md."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"Measured {m['date']} by `{report['command']}`: {m['cpu']} ({m['capability']}), {m['threads']} threads of "
        f"{m['cpus']} CPUs, Python {m['python']}, torch {m['torch']} ({'; '.join(m['libraries'])}), transformers "
        f"{m['transformers']}; load average before the run {m['load_average'][0]:.2f}. Medians of {s['repeats']} "
        f"repeats ({s['repeats'] + 2} for batch-1 decoding, {s['forward_repeats']} for forwards), contenders taking "
        "turns.",
        "",
        "**Greedy decoding**, prompt 16, 64 new tokens, fp32 unless noted. `generate` ms/step: end to end, "
        "(time of 64 tokens - time of 1) / 63. Against the bound, ours only: `step` is one decoding step alone "
        "(generate's step function and the greedy choice), `sweep` the time to read every weight once in that "
        "dtype, the two taking turns 32 times per repeat; `x sweep` is the median of step / preceding sweep. "
        "`GEMM bound`: the step's products at the measured GEMM throughput for its rows (the Bounds below), and "
        "bound / step. `arithmetic`: the step's products at the best throughput measured for each shape at any row "
        "count (near the FMA peak), which no step beats even with its weights in cache; `x bound`: step / the larger "
        f"of sweep and arithmetic. transformers runs at batches {', '.join(str(b) for b in s['theirs_batches'])} "
        "only.",
        "",
        "| contender | batch | `generate` ms/step | tokens/s | step ms | sweep ms | x sweep | GEMM bound ms | "
        "arithmetic ms | x bound | vs transformers use_cache=False |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["decode"]:
        bound = f"{r['step_ms']:.1f} | {r['sweep_ms']:.1f} | {r['x_sweep']:.2f}" if "x_sweep" in r else " | | "
        gemm = f"{r['gemm_bound_ms']:.1f} ({r['of_gemm_bound']:.2f})" if "gemm_bound_ms" in r else ""
        arithmetic = f"{r['arithmetic_ms']:.1f} | {r['x_bound']:.2f}" if "x_bound" in r else " | "
        speedup = f"{r['speedup_vs_transformers_no_cache']:.2f}x" if "speedup_vs_transformers_no_cache" in r else ""
        lines.append(
            f"| {r['contender']} | {r['batch']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.1f} | {bound} | "
            f"{gemm} | {arithmetic} | {speedup} |"
        )
    compiled = [r for r in report["decode"] if "first_call_s" in r]
    firsts = ", ".join(f"{r['contender'][4:]} batch {r['batch']} {r['first_call_s']:.0f} s" for r in compiled)
    if compiled:
        lines += [
            "",
            "First call of the compiled decoders (prefill + 2 steps, compiled from scratch; torch's on-disk cache "
            f"makes later processes start faster): {firsts}.",
        ]
    sw, wb = report["sweep"], report["weight_bytes"]
    lines += [
        "",
        f"**Weights sweep**: fp32 {wb['fp32'] / 1e6:.0f} MB in {sw['fp32_ms']:.1f} ms "
        f"({wb['fp32'] / sw['fp32_ms'] / 1e6:.1f} GB/s), bf16 {wb['bf16'] / 1e6:.0f} MB in {sw['bf16_ms']:.1f} ms "
        f"({wb['bf16'] / sw['bf16_ms'] / 1e6:.1f} GB/s): medians of every sweep of the plain models, batch 1.",
        "",
    ]
    lines += render_bounds(report["bounds"], s["bound_repeats"])
    lines += [
        "",
        "**Forward**, all-position logits, causal, ms (speed-up over transformers; max |logits difference|; GEMM "
        "bound / ms, the bound of its dtype being the row `GEMM bound` in ms).",
        "",
    ]
    lines += render_forward(report["forward"])
    lines += ["", "**Load to first logits** in a fresh process (weights in the page cache).", ""]
    lines += [
        "| | seconds | over `import torch` | peak RSS | over `import torch` | x fp32 weight bytes |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for r in report["load"]:
        lines.append(
            f"| {r['contender']} | {r['process_s']:.2f} | {r['seconds_over_torch']:.2f} | "
            f"{r['maxrss_bytes'] / 2**20:.0f} MiB | {r['rss_over_torch_bytes'] / 2**20:.0f} MiB | "
            f"{r['rss_over_torch_x_weights']:.2f} |"
        )
    lines += render_scoring_and_tokenizer(report)
    b = report["bf16"]
    lines += [
        "",
        f"**bf16 against fp32** (ours, {b['batch']}, causal): top-1 agreement {100 * b['top1_agreement']:.2f}%, "
        f"logits max |difference| {b['max_abs_logits']:.3f}, mean {b['mean_abs_logits']:.4f}.",
        "",
        "**Acceptance** (the decode bound), on the fastest configuration; the other configurations against the same "
        "targets, in parentheses, for information.",
        "",
        "| check | measured | target | met |",
        "|---|--:|--:|---|",
    ]
    for v in report["verdicts"]:
        value = f"{v['value']:.3g}" if abs(v["value"]) < 1e-3 else f"{v['value']:.3f}"
        met = ("yes" if v["met"] else "**no**") if not v["info"] else ("(yes)" if v["met"] else "(no)")
        lines.append(f"| {v['check']} | {value} | {v['target']} | {met} |")
    return "\n".join(lines)


def render_forward(rows: list[dict]) -> list[str]:
    names = list(dict.fromkeys(r["contender"] for r in rows))
    header = "| B x T | fp32 GEMM bound | bf16 GEMM bound | " + " | ".join(names) + " |"
    lines = [header, "|---|" + "--:|" * (len(names) + 2)]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        of_shape = {r["contender"]: r for r in rows if r["shape"] == shape}
        bound = {dtype_of(name): r["gemm_bound_ms"] for name, r in of_shape.items()}
        cells = [f"{bound['fp32']:.1f}", f"{bound['bf16']:.1f}" if "bf16" in bound else ""]
        for name, r in of_shape.items():
            extra = f"; {r['of_gemm_bound']:.2f})"
            if not name.startswith("transformers"):
                extra = f" ({r['speedup_vs_transformers']:.2f}x; {r['max_abs_vs_transformers']:.1e}{extra}"
            else:
                extra = f" ({r['of_gemm_bound']:.2f})"
            cells.append(f"{r['ms']:.1f}{extra}")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def product_name(entry: dict) -> str:
    """Which of the model's products a measured shape is: q, k, v, out (C, C); lin1 (F, C); lin2 (C, F); head."""
    if entry["head"]:
        return "head"
    return "q, k, v, out" if entry["out"] == entry["in"] else "lin1" if entry["out"] > entry["in"] else "lin2"


def render_bounds(bounds: dict, repeats: int) -> list[str]:
    """GFLOP/s per product, dtype and row count (the best kernel's, and the other's), the whole model's
    products at the bound, and the sweep."""
    entries, sweeps = bounds["gemm"], bounds["sweep"]
    rows = sorted({e["rows"] for e in entries})
    letters = {"mkl": "m", "matmul": "t", "onednn": "d"}
    lines = [
        f"**Bounds**, measured in this run (medians of {repeats}, all taking turns). GFLOP/s of y = x W^T + b on "
        "the model's own weights W (O x I) at each row count: the best library kernel, and in parentheses the "
        "other; m = MKL (F.linear, fp32), t = torch's bf16 matmul (F.linear, oneDNN AVX512-BF16), d = oneDNN's "
        "linear (`xlm.fast.onednn_linear`). `all products`: the model's products per token (4 L q, k, v, out; L "
        "lin1; L lin2; the head) at these rates, and `GEMM bound` their time (`gemm_bound_seconds`).",
        "",
        "| product | O x I | dtype | " + " | ".join(f"{r} rows" for r in rows) + " |",
        "|---|---|---|" + "--:|" * len(rows),
    ]
    for dtype in dict.fromkeys(e["dtype"] for e in entries):
        shapes = dict.fromkeys((e["out"], e["in"]) for e in entries if e["dtype"] == dtype)
        for out_features, in_features in shapes:
            cells = []
            for r in rows:
                e = next(e for e in entries if (e["dtype"], e["out"], e["in"], e["rows"]) ==
                         (dtype, out_features, in_features, r))  # fmt: skip
                others = ", ".join(f"{g:.0f}" for name, g in e["gflops"].items() if name != e["kernel"])
                cells.append(f"{e['best_gflops']:.0f} {letters.get(e['kernel'], e['kernel'])}"
                             + (f" ({others})" if others else ""))  # fmt: skip
            lines.append(f"| {product_name(e)} | {out_features} x {in_features} | {dtype} | {' | '.join(cells)} |")
        per_token = sum(2 * e["out"] * e["in"] * e["per_token"] for e in entries if e["dtype"] == dtype
                        and e["rows"] == rows[0])  # fmt: skip
        seconds = [gemm_bound_seconds(bounds, r, dtype) for r in rows]
        lines.append(f"| all products | | {dtype} | " + " | ".join(f"{per_token * r / t / 1e9:.0f}"
                     for r, t in zip(rows, seconds, strict=True)) + " |")  # fmt: skip
        lines.append(f"| GEMM bound ms | | {dtype} | " + " | ".join(f"{1e3 * t:.1f}" for t in seconds) + " |")
    swept = [
        f"{dtype} {v['bytes'] / 1e6:.0f} MB in {v['ms']:.1f} ms ({v['gb_per_s']:.1f} GB/s)"
        for dtype, v in sweeps.items()
    ]
    return [*lines, "", f"Weights sweep in the same turns: {', '.join(swept)}."]


def render_scoring_and_tokenizer(report: dict) -> list[str]:
    rows = report["scoring"]
    lines = [
        "",
        f"**Corpus scoring**, {rows[0]['sentences']} sentences of 8-64 tokens ({rows[0]['tokens']} scored tokens), "
        "batches of <= 4096 padded tokens: "
        + ", ".join(f"{r['contender']} {r['tokens_per_s']:.0f}" for r in rows)
        + " tokens/s.",
        "",
    ]
    tok = report["tokenizer"]
    if "skipped" in tok:
        return [*lines, f"**Tokenizer**: skipped ({tok['skipped']})."]
    lines.append(f"**Tokenizer**, {tok['lines']:,} real en + fr sentences (scripts/bench_tokenizer.py): ")
    lines[-1] += ", ".join(
        f"{r['tokenizer']} {r['workers']} worker{'s' if r['workers'] > 1 else ''} {r['sentences_per_s']:,.0f}"
        for r in tok["results"]
    )
    lines[-1] += " sentences/s."
    return lines


def write_docs(table: str, begin: str = BEGIN, end: str = END) -> None:
    text = DOCS.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{DOCS} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    DOCS.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


# --- One training step (`--only train`) ----------------------------------------------------------------------
# A full step at the real shape: forward, loss, backward, gradient clipping at 5, an AdamW update (the same
# optimizer, fused, for both). Random ids, batch 8 x 256, dropout off so that both compute the same losses from the
# same weights. CLM (causal; transformers' labels shifted by hand), and MLM on the same masked batches (both
# bidirectional; transformers' labels -100 where nothing is predicted). Each contender runs in a child process of
# its own (peak RSS is per process), one after the other: a warm-up step (it also allocates Adam's moments), then
# `repeats` timed steps. "fast": `xlm train --fast`'s step (xlm/fast.py: oneDNN products with their gradients, the
# head and its loss fused over chunks of positions). The section can run in parts (--train-contenders), each
# writing its JSON, and be rendered from them (--train-merge): the first part holds the CLM acceptance figures.

TRAIN_SHAPE = (8, 256)
TRAIN_CONTENDERS = (
    "transformers fp32 clm", "xlm fp32 clm", "xlm fp32 fast clm", "xlm bf16 fast clm", "xlm bf16 clm",
    "transformers bf16 clm", "transformers fp32 mlm", "xlm fp32 mlm", "xlm fp32 fast mlm",
)  # fmt: skip
TRAIN_BEGIN, TRAIN_END = "<!-- bench.py train: begin -->", "<!-- bench.py train: end -->"


def train_batch(vocab_size: int, objective: str, seed: int):
    """A TrainBatch of random ids, language en; for MLM masked as xlm train masks (labels: the targets)."""
    from xlm.data import TrainBatch
    from xlm.objectives import mask_batch

    ids = random_ids(vocab_size, TRAIN_SHAPE, seed=seed)
    batch = TrainBatch(ids, torch.zeros_like(ids), torch.arange(ids.size(1)).expand_as(ids), ids > 0)
    if objective == "clm":
        return batch
    generator = torch.Generator().manual_seed(seed)
    return mask_batch(batch, generator, mask_id=5, vocab_size=vocab_size)


def adam_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    loss.backward()
    return clip_and_step(model, optimizer, loss)


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def xlm_train_step(path: Path, amp: torch.dtype | None, objective: str, fast_step: bool = False) -> Callable:
    """`xlm train`'s step (its Objectives module: the head on predicted positions only), then the update; with
    `fast_step`, `xlm train --fast`'s: forward and backward under xlm.fast's kernels, the head and loss fused."""
    from xlm.train import Objectives, TrainConfig, build_model

    model = build_model(TrainConfig("", "", init=str(path), dropout=0.0, attention_dropout=0.0), path).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    losses = Objectives(model, fast=fast_step)

    def step(batch) -> float:
        with fast.FastKernels() if fast_step else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
                loss_sum, count = losses(objective, batch)
            loss = loss_sum / count
            loss.backward()  # inside the kernels' block, as xlm train does
        return clip_and_step(model, optimizer, loss)

    return step


def transformers_train_step(path: Path, amp: torch.dtype | None, objective: str) -> Callable:
    """XLMWithLMHeadModel(labels=...): logits at every position, cross-entropy where the label is not -100."""
    transformers = import_transformers()
    model = transformers.XLMWithLMHeadModel.from_pretrained(
        path, dtype=torch.float32, causal=objective == "clm", dropout=0.0, attention_dropout=0.0
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)

    def step(batch) -> float:
        if objective == "clm":
            labels = torch.full_like(batch.input_ids, -100)
            labels[:, :-1] = batch.input_ids[:, 1:]  # position t predicts token t+1: its loss does not shift
        else:
            labels = batch.labels
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            loss = model(input_ids=batch.input_ids, langs=batch.langs, labels=labels).loss
        return adam_update(model, optimizer, loss)

    return step


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB."""
    import resource

    current = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_child(contender: str, path: Path, repeats: int, threads: int) -> dict:
    """In the child process: set up one contender, a warm-up step, then `repeats` timed steps."""
    torch.set_num_threads(threads)
    name, dtype, *variant, objective = contender.split()
    amp = torch.bfloat16 if dtype == "bf16" else None
    if name == "xlm":
        step = xlm_train_step(path, amp, objective, fast_step=variant == ["fast"])
    else:
        step = transformers_train_step(path, amp, objective)
    setup_rss, _ = rss_mib()
    vocab_size = json.loads((path / "config.json").read_text())["vocab_size"]
    batches = [train_batch(vocab_size, objective, seed=i) for i in range(repeats + 1)]
    losses, seconds = [step(batches[0])], []
    for batch in batches[1:]:
        start = time.perf_counter()
        losses.append(step(batch))
        seconds.append(time.perf_counter() - start)
    return {"contender": contender, "seconds": seconds, "losses": losses, "setup_rss_mib": setup_rss,
            "peak_rss_mib": rss_mib()[1]}  # fmt: skip


def train_gemm_bound(path: Path, threads: int, repeats: int = 2) -> dict:
    """The step's fp32 and bf16 GEMM bound: 6 FLOPs per weight per token (a product forward, two backward) at the
    throughput of the fastest library kernel at each of the model's four weight shapes, measured forward.

    Rows: B x T for the blocks, B x (T - 1) for a CLM step's head. Per shape the best of `repeats` timings of
    F.linear (MKL for fp32, oneDNN for bf16) and of oneDNN's fp32 matmul (xlm.fast.onednn_linear), taking turns.
    """
    torch.set_num_threads(threads)
    config = json.loads((path / "config.json").read_text())
    C, V, L = config["emb_dim"], config["vocab_size"], config["n_layers"]
    blocks, head = TRAIN_SHAPE[0] * TRAIN_SHAPE[1], TRAIN_SHAPE[0] * (TRAIN_SHAPE[1] - 1)
    shapes = [(C, C, 4 * L, blocks), (4 * C, C, L, blocks), (C, 4 * C, L, blocks), (V, C, 1, head)]
    rows, bound = [], {"fp32": 0.0, "bf16": 0.0}
    for out_features, in_features, count, n in shapes:
        x, w = torch.randn(n, in_features), torch.randn(out_features, in_features) * in_features**-0.5
        xb, wb = x.bfloat16(), w.bfloat16()
        kernels = {
            "fp32 F.linear": functools.partial(torch.nn.functional.linear, x, w),
            "fp32 oneDNN": functools.partial(fast.onednn_linear, x, w, None),
            "bf16 F.linear": functools.partial(torch.nn.functional.linear, xb, wb),
        }
        for kernel in kernels.values():
            kernel()  # warm-up: oneDNN builds its primitive once per shape
        times = take_turns({name: functools.partial(timed, kernel) for name, kernel in kernels.items()}, repeats)
        flop = 2 * n * out_features * in_features
        row = {"shape": f"{n}x{in_features} @ ({out_features}, {in_features})", "count": count}
        row.update({f"{name} GFLOP/s": flop / min(seconds) / 1e9 for name, seconds in times.items()})
        for dtype in ("fp32", "bf16"):
            best = max(v for k, v in row.items() if k.startswith(dtype))
            bound[dtype] += 3 * count * flop / (best * 1e9)  # forward, grad_x, grad_W
        rows.append(row)
    return {"shapes": rows, "fp32_s": bound["fp32"], "bf16_s": bound["bf16"]}


def child_json(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def bench_train(settings: Settings, path: Path, contenders: tuple[str, ...]) -> list[dict]:
    """Every contender in a child process; tokens/s = 8 * 256 / median step seconds."""
    rows = []
    for contender in contenders:
        row = child_json(["--train-child", contender, "--checkpoint", str(path), "--repeats", str(settings.repeats),
                          "--threads", str(settings.threads)])  # fmt: skip
        row["step_s"] = median(row["seconds"])
        row["tokens_per_s"] = TRAIN_SHAPE[0] * TRAIN_SHAPE[1] / row["step_s"]
        rows.append(row)
    return rows


def compare_train(rows: list[dict]) -> None:
    """Each row against transformers fp32 on the same objective (where measured): speed-up, loss difference."""
    for row in rows:
        reference = next((r for r in rows if r["contender"] == f"transformers fp32 {row['contender'].split()[-1]}"),
                         None)  # fmt: skip
        if reference is None:
            continue
        row["speedup_vs_transformers_fp32"] = reference["step_s"] / row["step_s"]
        row["max_loss_diff_vs_transformers_fp32"] = max(
            abs(a - b) for a, b in zip(row["losses"], reference["losses"], strict=True)
        )


def render_train(report: dict) -> str:
    """The training-step table of docs/performance.md, with its targets."""
    rows = {r["contender"]: r for r in report["train"]}
    parts = report.get("parts", [report])
    runs = "; ".join(
        f"`{p['command']}` ({p['machine']['date']}, load average before it {p['machine']['load_average'][0]:.2f}: "
        f"{', '.join(r['contender'] for r in p['train'])})"
        for p in parts
    )
    merged = f", rendered by `{report['command']}`" if len(parts) > 1 else ""
    m = parts[0]["machine"]
    lines = [
        f"Measured by {runs}{merged}: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, transformers "
        f"{m['transformers']}. One step = forward, loss, backward, clipping, AdamW update, batch {TRAIN_SHAPE[0]} x "
        f"{TRAIN_SHAPE[1]}, dropout off; median of {len(report['train'][0]['seconds'])} steps after a warm-up, each "
        "contender in its own process. Compared with transformers fp32 on the same objective; the loss difference "
        "is the largest over all steps (the same batches, the weights updated alike).",
        "",
        "| contender | step s | tokens/s | vs transformers fp32 | max abs loss difference | peak RSS MiB |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows.items():
        speedup, diff = r.get("speedup_vs_transformers_fp32"), r.get("max_loss_diff_vs_transformers_fp32")
        lines.append(
            f"| {name} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} | {'-' if diff is None else f'{diff:.1e}'} "
            f"| {r['peak_rss_mib']:,.0f} |"
        )
    lines += render_bound(report.get("gemm_bound"), rows)
    lines += ["", "| check | measured | target | met |", "|---|--:|--:|---|"]
    for name, value, target in train_checks(report, rows):
        verdict = ("-", "information") if target is None else (f">= {target}x", "yes" if value >= target else "no")
        lines.append(f"| {name} | {value:.2f}x | {verdict[0]} | {verdict[1]} |")
    same = [r["max_loss_diff_vs_transformers_fp32"] for n, r in rows.items()
            if n.startswith("xlm fp32") and "max_loss_diff_vs_transformers_fp32" in r]  # fmt: skip
    if same:
        lines.append(f"| xlm fp32 losses (plain and fast) vs transformers fp32, every step | {max(same):.1e} | "
                     f"<= 1e-4 | {'yes' if max(same) <= 1e-4 else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def train_checks(report: dict, rows: dict[str, dict]) -> list[tuple[str, float, float | None]]:
    """(check, measured ratio, target or None for information) for every check whose contenders were measured."""

    def ratio(slow: str, quick: str) -> float | None:
        return rows[slow]["step_s"] / rows[quick]["step_s"] if slow in rows and quick in rows else None

    checks = [
        ("CLM step, xlm fp32 / transformers fp32, tokens/s", ratio("transformers fp32 clm", "xlm fp32 clm"), 1.2),
        ("CLM step, xlm fp32 fast / transformers fp32, tokens/s",
         ratio("transformers fp32 clm", "xlm fp32 fast clm"), 1.2),
        ("MLM step, xlm fp32 / transformers fp32, tokens/s", ratio("transformers fp32 mlm", "xlm fp32 mlm"), 1.2),
        ("MLM step, xlm fp32 fast / transformers fp32, tokens/s",
         ratio("transformers fp32 mlm", "xlm fp32 fast mlm"), 1.2),
        ("CLM step, xlm bf16 autocast / xlm fp32, tokens/s", ratio("xlm fp32 clm", "xlm bf16 clm"), 1.8),
        ("CLM step, xlm bf16 fast / xlm fp32, tokens/s", ratio("xlm fp32 clm", "xlm bf16 fast clm"), 1.8),
        ("CLM step, xlm bf16 fast / xlm fp32, tokens/s (stronger)", ratio("xlm fp32 clm", "xlm bf16 fast clm"), 2.0),
        ("CLM step, xlm bf16 fast / xlm fp32 fast, tokens/s", ratio("xlm fp32 fast clm", "xlm bf16 fast clm"), None),
    ]  # fmt: skip
    bound = report.get("gemm_bound")
    if bound and "xlm fp32 fast clm" in rows:
        checks.append(("CLM step, xlm fp32 fast: fp32 GEMM bound / step time", bound["fp32_s"] /
                       rows["xlm fp32 fast clm"]["step_s"], 0.6))  # fmt: skip
    return [(name, value, target) for name, value, target in checks if value is not None]


def render_bound(bound: dict | None, rows: dict[str, dict]) -> list[str]:
    """The GEMM bound's table: throughput per shape and kernel, and the step's bound in seconds."""
    if not bound:
        return []
    lines = ["", "The step's GEMM bound (`train_gemm_bound`: 6 FLOPs per weight per token at the best kernel's "
             "throughput at each weight shape, forward products of B x T rows; the head at B x (T - 1)):", "",
             "| rows x in @ (out, in) | per step | fp32 F.linear GFLOP/s | fp32 oneDNN GFLOP/s | bf16 GFLOP/s |",
             "|---|--:|--:|--:|--:|"]  # fmt: skip
    for r in bound["shapes"]:
        lines.append(f"| {r['shape']} | {r['count']} | {r['fp32 F.linear GFLOP/s']:.0f} | "
                     f"{r['fp32 oneDNN GFLOP/s']:.0f} | {r['bf16 F.linear GFLOP/s']:.0f} |")  # fmt: skip
    sentences = []
    for dtype, contender in (("fp32", "xlm fp32 fast clm"), ("bf16", "xlm bf16 fast clm")):
        step = rows.get(contender)
        share = f" (`{contender}` runs at {bound[f'{dtype}_s'] / step['step_s']:.0%} of it)" if step else ""
        sentences.append(f"{dtype} {bound[f'{dtype}_s']:.2f} s{share}")
    return [*lines, "", f"The bound of a CLM step: {'; '.join(sentences)}."]


def run_train_only(settings: Settings, command: str, write: bool, contenders: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report = {"command": command, "settings": dataclasses.asdict(settings), "machine": machine(settings)}
        path = checkpoint(settings, Path(scratch))
        if "xlm fp32 fast clm" in contenders:  # the bound of that step, measured right before it
            report["gemm_bound"] = child_json(["--train-bound", "--checkpoint", str(path),
                                               "--threads", str(settings.threads)])  # fmt: skip
        report["train"] = bench_train(settings, path, contenders)
    compare_train(report["train"])
    return finish_train(report, write)


def merge_train(paths: list[Path], command: str, write: bool) -> dict:
    """One report from the JSON of several `--only train` runs (each its own contenders), rendered as one table."""
    parts = [json.loads(path.read_text()) for path in paths]
    rows = [row for part in parts for row in part["train"]]
    compare_train(rows)
    bound = next((part["gemm_bound"] for part in parts if "gemm_bound" in part), None)
    report = {"command": command, "parts": parts, "train": rows, **({"gemm_bound": bound} if bound else {})}
    return finish_train(report, write)


def finish_train(report: dict, write: bool) -> dict:
    table = render_train(report)
    print(table)
    if write:
        write_docs(table, TRAIN_BEGIN, TRAIN_END)
    return report


# --- Main ---------------------------------------------------------------------------------------------------


def run(settings: Settings, command: str) -> dict:
    torch.set_num_threads(settings.threads)
    report: dict = {"command": command, "settings": dataclasses.asdict(settings), "machine": machine(settings)}
    with tempfile.TemporaryDirectory() as scratch:
        models = load_models(checkpoint(settings, Path(scratch)), compiled=False)  # +compile: over 16 rows only
        report["weight_bytes"] = weight_bytes(models)
        report["bounds"] = bench_bounds(plain_models(models), settings)
        report["bf16"] = bf16_agreement(models)
        report["decode"] = bench_decode(models, settings)
        report["sweep"] = {
            f"{dtype}_ms": next(r["sweep_ms"] for r in report["decode"] if r["contender"] == f"xlm {dtype}")
            for dtype in ("fp32", "bf16")
        }
        report["forward"] = bench_forward(models, settings)
        report["scoring"] = bench_scoring(models, settings)
        del models
        report["load"] = bench_load_fresh(settings, Path(scratch))
    report["tokenizer"] = bench_tokenizers(settings)
    add_bound_fractions(report)
    report["verdicts"] = verdicts(report)
    return report


def plain_models(models: Models) -> dict[str, torch.nn.Module]:
    return {dtype: models.ours[dtype].model for dtype in ("fp32", "bf16")}


def run_section(section: str, settings: Settings, command: str) -> dict:
    """`--only bounds` (the GEMM throughput and the sweep) or `--only forward` (the bounds, then the forwards
    against them), each in one process like the full run; nothing else is loaded or measured."""
    torch.set_num_threads(settings.threads)
    report: dict = {"command": command, "settings": dataclasses.asdict(settings), "machine": machine(settings)}
    with tempfile.TemporaryDirectory() as scratch:
        models = load_models(checkpoint(settings, Path(scratch)), compiled=False, theirs=section == "forward")
        report["bounds"] = bench_bounds(plain_models(models), settings)
        lines = render_bounds(report["bounds"], settings.bound_repeats)
        if section == "forward":
            report["forward"] = bench_forward(models, settings)
            add_bound_fractions(report)
            lines += ["", *render_forward(report["forward"])]
    print("\n".join(lines))
    return report


def bench_load_fresh(settings: Settings, scratch: Path) -> list[dict]:
    path = checkpoint(settings, scratch)
    models = Models(path, {dtype: Ours(load_pretrained(path), Decoder()) for dtype in ("fp32", "bf16")}, None, 0)
    return bench_load(models, settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the table in {DOCS.name}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every contender (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of decoding, loading, scoring (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 repeat, 8 new tokens, small corpora")
    parser.add_argument("--small", action="store_true", help="a scaled-down model (for tests; figures mean nothing)")
    parser.add_argument(
        "--only", choices=["train", "bounds", "forward"],
        help="only this section: train = one full training step; bounds = GEMM throughput and the weights sweep; "
        "forward = the bounds and the forwards",
    )  # fmt: skip
    parser.add_argument("--train-contenders", metavar="A,B", help="--only train: these contenders (default: all)")
    parser.add_argument(
        "--train-merge",
        metavar="JSON",
        nargs="+",
        type=Path,
        help="--only train: render the table from the --json of several runs instead of measuring",
    )
    parser.add_argument("--train-child", metavar="CONTENDER", help=argparse.SUPPRESS)  # bench_train's children
    parser.add_argument("--train-bound", action="store_true", help=argparse.SUPPRESS)  # the GEMM bound's child
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        print(json.dumps(train_child(args.train_child, args.checkpoint, args.repeats, args.threads)))
        return 0
    if args.train_bound:
        print(json.dumps(train_gemm_bound(args.checkpoint, args.threads)))
        return 0
    settings = Settings(threads=args.threads, repeats=args.repeats, small=args.small)
    if args.quick or args.small:
        settings = dataclasses.replace(
            settings, repeats=1, forward_repeats=1, bound_repeats=1, new_tokens=8, scoring_sentences=8,
            tokenizer_lines=200,
        )  # fmt: skip
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.only == "train":
        contenders = TRAIN_CONTENDERS
        if args.train_contenders:
            contenders = tuple(name.strip() for name in args.train_contenders.split(","))
            if unknown := set(contenders) - set(TRAIN_CONTENDERS):
                parser.error(f"unknown contenders {sorted(unknown)}; known: {', '.join(TRAIN_CONTENDERS)}")
        if args.train_merge:
            report = merge_train(args.train_merge, command.strip(), args.write_docs)
        else:
            report = run_train_only(settings, command.strip(), args.write_docs, contenders)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0
    if args.only in ("bounds", "forward"):
        if args.write_docs:
            parser.error(f"--only {args.only} prints its tables; --write-docs needs the whole run")
        report = run_section(args.only, settings, command.strip())
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0
    report = run(settings, command.strip())
    table = render(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.write_docs:
        write_docs(table)
    met = all(v["met"] for v in report["verdicts"] if not v["info"])
    return 0 if met or args.quick or args.small else 1


if __name__ == "__main__":
    sys.exit(main())
