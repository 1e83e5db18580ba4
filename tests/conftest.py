"""Shared fixtures: seeded random checkpoints that transformers itself writes (tiny and full size); data from
outside the repository, each found through one setting; and a test report.

Missing outside data skips a test on a developer's machine but fails it in CI (env `CI` set to 1/true), so
that CI can never pass by skipping. The same holds for the optional fastBPE backend, which CI requires by
setting `XLM_REQUIRE_FASTBPE=1`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from scripts.bench_tokenizer import (
    LOCALE_DIR,
    default_enfr_vocab_dir,
    gettext_corpus,
    make_enfr_tokenizer_dir,
    transformers_reference_ids,
)
from xlm.bpe import fastbpe_installed
from xlm.config import PRESETS, XLMConfig
from xlm.synthetic import save_synthetic_checkpoint

FULL_SIZE = "xlm-clm-enfr-1024"


def scaled_down(config: XLMConfig) -> XLMConfig:
    """The same structure (languages, language table or not, heads) at a size that runs in milliseconds.

    512 pieces leave room for the synthetic character-level tokenizer (xlm.synthetic).
    """
    return dataclasses.replace(config, vocab_size=512, dim=8 * config.n_heads, n_layers=2)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_checkpoint(tmp_path: Path):
    """A factory: scaled-down preset -> directory written by transformers' save_pretrained."""

    def make(preset: str = "xlm-clm-enfr-1024", seed: int = 0) -> Path:
        return save_synthetic_checkpoint(scaled_down(PRESETS[preset]), tmp_path / preset, seed=seed)

    return make


@pytest.fixture(scope="session")
def full_size_checkpoint(tmp_path_factory) -> Path:
    """The exact published xlm-clm-enfr-1024 architecture with seeded random weights (567 MB, written once)."""
    return save_synthetic_checkpoint(PRESETS[FULL_SIZE], tmp_path_factory.mktemp("full") / FULL_SIZE, seed=0)


def random_ids(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Ids from [14, V): no special ids, so that transformers cannot mistake one for padding."""
    return torch.randint(14, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ---- tokenizer data -----------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str, *, required: bool) -> None:
    """Skip with `reason`, or fail with it where the thing is required (CI)."""
    if required:
        pytest.fail(f"{reason} (required here, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# ---- a report in pytest's terminal summary -------------------------------------------------------------

_REPORT_LINES: list[str] = []


@pytest.fixture(scope="session")
def report():
    """`report("...")` adds a line to the "xlm test report" section that pytest prints at the end of a run."""
    return _REPORT_LINES.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _REPORT_LINES:
        terminalreporter.section("xlm test report")
        for line in _REPORT_LINES:
            terminalreporter.write_line(line)


# ---- outside data --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def enfr_vocab_dir() -> Path:
    """The original English-French fastBPE files (codes_enfr, vocab_enfr): env XLM_ENFR_VOCAB, default
    ../shared/xlm-enfr-vocab. Third-party data (CC BY-NC): read in place, never copied into the repository."""
    directory = default_enfr_vocab_dir()
    if not ((directory / "codes_enfr").is_file() and (directory / "vocab_enfr").is_file()):
        skip_or_fail(f"no codes_enfr/vocab_enfr in {directory} (set XLM_ENFR_VOCAB)", required=_env_flag("CI"))
    return directory


@pytest.fixture(scope="session")
def enfr_tokenizer_dir(enfr_vocab_dir: Path, tmp_path_factory) -> Path:
    """xlm-clm-enfr-1024's tokenizer files as on the hub (vocab.json, merges.txt, tokenizer_config.json)."""
    return make_enfr_tokenizer_dir(enfr_vocab_dir, tmp_path_factory.mktemp("xlm-clm-enfr-1024"))


@pytest.fixture(scope="session")
def transformers_module():
    """transformers, the reference implementation (a test dependency: CI must have it)."""
    try:
        import transformers
    except ImportError:
        skip_or_fail("transformers is not installed (pip install 'xlm[test]')", required=_env_flag("CI"))
    transformers.utils.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="session")
def enfr_transformers_tokenizer(transformers_module, enfr_tokenizer_dir: Path):
    """transformers' `XLMTokenizer` on the enfr files, configured as on the hub: the reference."""
    return transformers_module.XLMTokenizer.from_pretrained(enfr_tokenizer_dir)


@pytest.fixture(scope="session")
def transformers_ids():
    """`transformers_ids(hf, text, lang, add_special_tokens=True)`: transformers' reference ids, with `lang`
    reaching Moses (scripts/bench_tokenizer.transformers_reference_ids)."""
    return transformers_reference_ids


@pytest.fixture(scope="session")
def gettext_text(report) -> dict[str, list[str]]:
    """Real English and French lines from the system's French gettext catalogs: {"en": [...], "fr": [...]}."""
    corpus = gettext_corpus() if LOCALE_DIR.is_dir() else {}
    if not corpus.get("en") or not corpus.get("fr"):
        skip_or_fail(f"no gettext catalogs in {LOCALE_DIR}", required=_env_flag("CI"))
    report(f"gettext corpus: {len(corpus['en']):,} English and {len(corpus['fr']):,} French lines ({LOCALE_DIR})")
    return corpus


@pytest.fixture(scope="session")
def require_fastbpe() -> None:
    """Use in tests of the fastBPE backend: skips without it, fails without it when XLM_REQUIRE_FASTBPE=1."""
    if not fastbpe_installed():
        skip_or_fail(
            "fastBPE is not installed (pip install -U setuptools wheel cython && "
            "pip install --no-build-isolation fastBPE)",
            required=_env_flag("XLM_REQUIRE_FASTBPE"),
        )
