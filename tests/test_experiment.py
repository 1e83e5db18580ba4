"""scripts/experiment.py end to end, in seconds: the --quick settings (200 real pairs a split, a 2-layer, 32-wide
model with the real 64,139-piece vocabulary), then its files, its tables against its JSON, its token budget,
and retrieval on the training pairs of the tiny MLM + TLM model it trained. Also the TLM-effect measure against
a row-by-row count."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import env_flag, skip_or_fail

from scripts import experiment
from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.gettext_corpus import LOCALE_DIR
from xlm.model import XLM

ROOT = Path(__file__).resolve().parent.parent
LANGS = ("en", "fr")
RETRIEVAL = ("en->fr", "fr->en", "en->fr centred", "fr->en centred")


@pytest.fixture(scope="module")
def done(tmp_path_factory, enfr_vocab_dir) -> tuple[experiment.Settings, dict]:
    """The quick experiment, writing into a copy of docs/experiments.md and a temporary img/ beside it."""
    if not sorted(LOCALE_DIR.glob("*.mo")):
        skip_or_fail(f"no gettext catalogs in {LOCALE_DIR}", required=env_flag("CI"))
    root = tmp_path_factory.mktemp("experiment")
    (root / "docs").mkdir()
    shutil.copyfile(ROOT / "docs" / "experiments.md", root / "docs" / "experiments.md")
    settings = experiment.Settings(**experiment.QUICK)
    settings = dataclasses.replace(
        settings, out=root / "out", images=root / "docs" / "img", page=root / "docs" / "experiments.md",
        vocab_dir=enfr_vocab_dir,
    )  # fmt: skip
    results = experiment.run_experiment(settings)
    for state in settings.out.glob("runs/*/checkpoint-*/training_state.pt"):
        state.unlink()  # the optimizer's state (~17 MB a run) is not needed here: the temporary files stay small
    return settings, results


def test_plots_tables_and_page_are_written(done):
    settings, results = done
    for name in ("experiment-loss.png", "experiment-retrieval.png"):
        image = (settings.images / name).read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000  # a drawn figure, not an empty one
    tables = (settings.out / "tables.md").read_text(encoding="utf-8")
    assert (
        json.loads((settings.out / "results.json").read_text(encoding="utf-8"))["runs"].keys() == results["runs"].keys()
    )
    page = settings.page.read_text(encoding="utf-8")
    assert f"{experiment.BEGIN}\n{tables}{experiment.END}" in page
    assert "The full run has not been made yet" not in page.split(experiment.BEGIN)[1].split(experiment.END)[0]
    assert "](img/experiment-loss.png)" in tables and "](img/experiment-retrieval.png)" in tables
    counts_block = page.split("<!-- make_gettext_corpus.py: begin -->")[1].split("<!-- make_gettext_corpus.py: end")[0]
    assert re.search(r"\| test \| \d+ \| 200 \|", counts_block)  # the corpus counts of this (truncated) corpus


def cells(table_text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown row that starts with `first_cell`."""
    for line in table_text.splitlines():
        parts = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if parts[0] == first_cell:
            return parts
    raise AssertionError(f"no row {first_cell!r}")


def test_the_tables_hold_the_json_figures(done):
    """Every number of both tables is the JSON's as printed: parsed back from the Markdown, compared as text."""
    settings, results = done
    runs_table, measures_table = (settings.out / "tables.md").read_text(encoding="utf-8").split("| model |")
    for name, run in results["runs"].items():
        assert cells(runs_table, name)[1:] == [
            f"{run['steps']:,}", f"{run['input_tokens']:,}", f"{run['wall_seconds'] / 60:.1f}",
            f"{run['cpu_seconds'] / 60:.1f}", f"{run['tokens_per_second']:,.0f}",
        ]  # fmt: skip
        objective = "clm" if name == "CLM" else "mlm"
        expected = [run["test"][f"{lang}_{objective}_{kind}"] for kind in ("ppl", "acc") for lang in LANGS]
        expected += [100 * run["retrieval"][key] for key in RETRIEVAL]
        if name == "CLM":
            effect = ["—", "—"]
        else:
            effect = [
                f"{run['translation'][lang]['with']:.1f} / {run['translation'][lang]['without']:.1f}" for lang in LANGS
            ]
        assert cells(measures_table, name)[1:] == [f"{x:.1f}" for x in expected] + effect
    untrained = [f"{100 * results['untrained'][key]:.1f}" for key in RETRIEVAL]
    assert cells(measures_table, "untrained (same size)")[1:] == ["", "", "", "", *untrained, "", ""]
    pieces = [f"{100 * results['pieces'][key]:.1f}" for key in RETRIEVAL[:2]]
    assert cells(measures_table, "bag of BPE pieces")[1:] == ["", "", "", "", *pieces, "", "", "", ""]
    chance = 1 / results["untrained"]["candidates"]
    assert results["pieces"]["chance"] == chance and f"Chance: {100 * chance:.3f}% (1 in 200)" in measures_table


def test_every_run_reads_the_budget_and_learns(done):
    """The same input tokens for each run, to within one step's tokens; each run's loss falls from ln(V) = 11.07
    (uniform over 64,139 pieces) by more than 3 nats; a retrieval point at step 0 and after each segment; the
    test split is measured whole."""
    settings, results = done
    assert results["corpus"] == {"train": 200, "valid": 200, "test": 200}
    assert results["untrained"]["candidates"] == 200
    for name, run in results["runs"].items():
        largest_step = max(run["tokens_per_step"]["stream"], run["tokens_per_step"]["pairs"])
        assert settings.tokens - largest_step <= run["input_tokens"] < settings.tokens + largest_step, name
        losses = [record["loss"] for record in run["records"] if "loss" in record]
        assert len(losses) == run["steps"] and losses[0] > 10.5
        assert sum(losses[-10:]) / 10 < math.log(64139) - 3, (name, losses[-10:])
        steps = [point["step"] for point in run["retrieval_curve"]]
        assert steps[0] == 0 and steps[-1] == run["steps"] and len(steps) == settings.segments + 1
        assert len(list(Path(run["checkpoint"]).parent.glob("checkpoint-*"))) == 1  # earlier ones removed


def test_the_tiny_tlm_model_retrieves_its_training_pairs(done):
    """MLM + TLM's model, on its own 200 training pairs (chance 0.5%), must retrieve the translation at least
    ten times as often as chance in both directions (centred cosine). Why that margin: a pipeline that loses the
    pairing anywhere (corpus files, prepare, the framing, retrieval's indexing) scores chance, 0.5%; a working one
    scores ~20% after this short run (the model has seen each pair a few times, and shared pieces help). 10x
    chance (5%) sits between with room for threads' rounding and seeds."""
    settings, results = done
    model = load_pretrained(results["runs"]["MLM + TLM"]["checkpoint"])
    training_pairs = experiment.framed_pairs(settings.out / "prepared", "train")
    scores = experiment.model_retrieval(model, training_pairs, causal=False)
    assert scores["candidates"] == 200
    assert scores["en->fr centred"] >= 10 * scores["chance"], scores
    assert scores["fr->en centred"] >= 10 * scores["chance"], scores


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["--tokens", "0"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_translation_effect_equals_a_row_by_row_count():
    """accuracy_with_and_without_translation batches sentences of several lengths with padding; here each row is
    written out alone (`</s> a </s> </s> b </s>`, languages per part, positions restarting at b's `</s>`; and
    `</s> a </s>`), and the hits counted one by one. The output bias leaves only ids 14-17 (the sentences'
    pieces) in reach, so the counts are neither 0 nor all: a wrong language, framing, padding or mask column
    changes them. (A wrong position in the other sentence barely moves a random model's prediction at a masked
    token; the TLM row itself is pinned by the data tests of `xlm.data.concat_pairs`.)"""
    config = dataclasses.replace(PRESETS["xlm-mlm-enfr-1024"], vocab_size=512, dim=32, n_layers=2, n_heads=4)
    torch.manual_seed(0)
    model = XLM(config).eval()
    with torch.no_grad():
        model.output_bias.fill_(-100.0)
        model.output_bias[14:18] = 0.0
    draw = torch.Generator().manual_seed(1)
    pieces = {lang: [torch.randint(14, 18, (int(n),), generator=draw).tolist()
                     for n in torch.randint(1, 10, (40,), generator=draw)] for lang in LANGS}  # fmt: skip
    sentences = {lang: [[1, *ids, 1] for ids in pieces[lang]] for lang in LANGS}
    choices = experiment.mask_choices([len(a) for a in pieces["en"]], rate=0.5, seed=2)
    got = experiment.accuracy_with_and_without_translation(model, sentences, "en", choices=choices, batch_size=16)
    hits, total = {"with": 0, "without": 0}, 0
    with torch.no_grad():
        for a, b, picks in zip(pieces["en"], pieces["fr"], choices, strict=True):
            masked_a = [5 if i in picks else token for i, token in enumerate(a)]
            rows = {
                "with": ([1, *masked_a, 1, 1, *b, 1], [0] * (len(a) + 2) + [1] * (len(b) + 2),
                         list(range(len(a) + 2)) + list(range(len(b) + 2))),
                "without": ([1, *masked_a, 1], [0] * (len(a) + 2), list(range(len(a) + 2))),
            }  # fmt: skip
            for condition, (ids, langs, positions) in rows.items():
                h = model.encode(torch.tensor([ids]), torch.tensor([langs]), causal=False,
                                 positions=torch.tensor([positions]))  # fmt: skip
                predicted = model.logits(h[0, [1 + i for i in picks]]).argmax(-1).tolist()
                hits[condition] += sum(p == a[i] for p, i in zip(predicted, picks, strict=True))
            total += len(picks)
    expected = {condition: 100.0 * count / total for condition, count in hits.items()}
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < expected["with"] < 100 and 0 < expected["without"] < 100 and total > 20
