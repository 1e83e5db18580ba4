"""scripts/bench.py runs end to end and writes every figure; never a timing assertion (docs/performance.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import seeded_model

from scripts import bench
from xlm.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"command", "settings", "machine", "weight_bytes", "bf16", "decode", "sweep", "forward", "scoring", "load"}


@pytest.mark.slow
def test_bench_runs_and_writes_its_json(tmp_path):
    """`--small`: a scaled-down model through every section (~3 minutes on 2 cores); figures unchecked."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "scripts/bench.py", "--small", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert KEYS | {"tokenizer", "verdicts"} <= report.keys()
    contenders = {row["contender"] for row in report["decode"]}
    assert {"transformers generate(use_cache=False)", "transformers generate() [wrong tokens]"} <= contenders
    batch = {b: {row["contender"] for row in report["decode"] if row["batch"] == b} for b in (1, 8, 16)}
    assert {f"xlm {d}{v}" for d in ("fp32", "bf16") for v in ("", " fast")} <= batch[1]
    assert {f"xlm {d}{v}" for d in ("fp32", "bf16") for v in ("", " fast")} <= batch[8] & batch[16]
    assert not any(name.endswith("+compile") for b in batch.values() for name in b)  # --fast: 1-16 rows in C++
    assert not any(name.startswith("transformers") for name in batch[16])
    assert {row["batch"] for row in report["decode"]} == {1, 8, 16}
    assert all("x_sweep" in row for row in report["decode"] if row["contender"].startswith("xlm"))
    assert all("of_gemm_bound" in row for row in report["decode"] if "x_sweep" in row and row["batch"] > 1)
    assert {row["shape"] for row in report["forward"]} == {"1x16", "8x128", "1x512"}
    forward = {row["contender"] for row in report["forward"]}
    assert {f"xlm {d}{v}" for d in ("fp32", "bf16") for v in ("", " fast")} | {"transformers fp32"} == forward
    assert all(row["of_gemm_bound"] > 0 for row in report["forward"])
    products = {(e["dtype"], e["out"], e["in"]) for e in report["bounds"]["gemm"]}
    assert len(products) == 8 and {e["rows"] for e in report["bounds"]["gemm"]} == {8, 16, 512, 1024, 2048}
    assert {row["contender"] for row in report["load"]} == set(bench.LOADERS)
    assert all(isinstance(v["met"], bool) for v in report["verdicts"])
    assert "**Acceptance** (the decode bound)" in done.stdout and "| xlm fp32 fast | 1 |" in done.stdout
    assert "**Bounds**" in done.stdout and "| GEMM bound ms | | bf16 |" in done.stdout


def bounds_of(shapes: dict[tuple[int, int], tuple[int, bool, dict[int, float]]], dtype: str = "fp32") -> dict:
    """A `bench_bounds` result by hand: {(O, I): (products per token, is the head, {rows: GFLOP/s})}."""
    gemm = [
        {"dtype": dtype, "out": o, "in": i, "per_token": n, "head": head, "rows": rows, "best_gflops": gflops}
        for (o, i), (n, head, rates) in shapes.items()
        for rows, gflops in rates.items()
    ]
    return {"gemm": gemm, "sweep": {}}


def test_gemm_bound_adds_each_shapes_products_at_its_measured_rate():
    """2 products of (10, 20) per token at 4 GFLOP/s and a head (30, 20) at 6 (10 rows) or 12 (30 rows)."""
    bounds = bounds_of({(10, 20): (2, False, {10: 4.0, 30: 8.0}), (30, 20): (1, True, {10: 6.0, 30: 12.0})})
    blocks, head = 2 * 2 * 10 * 10 * 20 / 4e9, 2 * 10 * 30 * 20 / 6e9  # FLOP / (FLOP/s), by hand
    assert bench.gemm_bound_seconds(bounds, 10, "fp32") == pytest.approx(blocks + head, rel=1e-12)
    assert bench.gemm_bound_seconds(bounds, 10, "fp32", head_rows=0) == pytest.approx(blocks, rel=1e-12)
    # 20 rows: halfway between the measured 10 and 30, so 6 and 9 GFLOP/s; the head on 30 rows: 12 GFLOP/s
    expected = 2 * 2 * 20 * 10 * 20 / 6e9 + 2 * 30 * 30 * 20 / 12e9
    assert bench.gemm_bound_seconds(bounds, 20, "fp32", head_rows=30) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="10-30 rows, not at 40"):
        bench.gemm_bound_seconds(bounds, 40, "fp32")
    with pytest.raises(ValueError, match="bf16"):
        bench.gemm_bound_seconds(bounds, 10, "bf16")


def test_arithmetic_bound_takes_each_shapes_best_rate_at_any_row_count():
    """The same shapes: the blocks' best rate is 8 GFLOP/s (measured at 30 rows), the head's 12, whatever `rows`."""
    bounds = bounds_of({(10, 20): (2, False, {10: 4.0, 30: 8.0}), (30, 20): (1, True, {10: 6.0, 30: 12.0})})
    for rows in (1, 8, 40):  # outside the measured rows too: the best rate is a ceiling, not a rate at those rows
        expected = 2 * 2 * rows * 10 * 20 / 8e9 + 2 * rows * 30 * 20 / 12e9
        assert bench.arithmetic_bound_seconds(bounds, rows, "fp32") == pytest.approx(expected, rel=1e-12)
    assert bench.arithmetic_bound_seconds(bounds, 8, "bf16") == 0.0  # nothing measured in bf16


def test_model_products_are_the_models_own_weights_by_shape():
    """Per token: 4 L (C, C), L (F, C), L (C, F), and the head, which is the embedding table with its own bias."""
    config = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=97, dim=16, n_layers=3, n_heads=2)
    model = seeded_model(config)
    products = bench.model_products(model)
    C, F, V = config.dim, config.ffn_dim, config.vocab_size
    assert {shape: len(pairs) for shape, pairs in products.items()} == {(C, C): 12, (F, C): 3, (C, F): 3, (V, C): 1}
    assert products[(V, C)][0][0] is model.embeddings.weight and products[(V, C)][0][1] is model.output_bias
    assert products[(F, C)][1][0] is model.blocks[1].ffn.lin1.weight


def test_write_docs_replaces_only_the_table(tmp_path, monkeypatch):
    page = tmp_path / "performance.md"
    page.write_text(f"# Title\n\nprose\n\n{bench.BEGIN}\nold table\n{bench.END}\n\nmore prose\n", encoding="utf-8")
    monkeypatch.setattr(bench, "DOCS", page)
    bench.write_docs("| new | table |")
    assert page.read_text() == f"# Title\n\nprose\n\n{bench.BEGIN}\n| new | table |\n{bench.END}\n\nmore prose\n"


def test_the_performance_page_holds_a_generated_table():
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    table = text.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert "by `python scripts/bench.py" in table and "**Acceptance** (the decode bound)" in table


@pytest.mark.slow
def test_the_training_step_section_runs_alone(tmp_path):
    """`--only train --small`: six contenders, each in its own process (~1-2 min); figures unchecked, but the
    losses of xlm and transformers must agree from the same weights and batches (fp32, dropout off)."""
    out = tmp_path / "train.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "scripts/bench.py", "--only", "train", "--small", "--json", str(out)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["contender"]: row for row in json.loads(out.read_text())["train"]}
    assert set(rows) == set(bench.TRAIN_CONTENDERS)
    assert rows["xlm fp32 clm"]["max_loss_diff_vs_transformers_fp32"] <= 1e-5
    assert rows["xlm fp32 mlm"]["max_loss_diff_vs_transformers_fp32"] <= 1e-5
    assert "| CLM step, xlm bf16 autocast / xlm fp32, tokens/s |" in done.stdout
