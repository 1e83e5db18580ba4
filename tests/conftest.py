"""Shared fixtures.

- Seeded random checkpoints that transformers itself writes (tiny and full size), and a fake hub cache.
- A small temporary footprint: the full-size checkpoint (567 MB) is written once into the synthetic-checkpoint
  cache ($XLM_CACHE, default ~/.cache/xlm, outside the temporary directory) and shared by every test and
  subprocess; torch.compile's cache goes into pytest's temporary directory, which pytest removes after a
  passing run (pyproject: tmp_path_retention_policy = "failed").
- Data from outside the repository (the real enfr BPE files, the gettext catalogs), each found through one
  setting. Missing outside data skips a test on a developer's machine but fails it in CI (env `CI` set to
  1/true), so that CI can never pass by skipping. The same holds for the optional fastBPE backend, which CI
  requires by setting `XLM_REQUIRE_FASTBPE=1`.
- A report in pytest's terminal summary (corpus line counts and the like).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from scripts.bench_tokenizer import (
    LOCALE_DIR,
    default_enfr_vocab_dir,
    gettext_corpus,
    make_enfr_tokenizer_dir,
)
from xlm.bpe import fastbpe_installed
from xlm.config import PRESETS, XLMConfig
from xlm.model import XLM
from xlm.parity import transformers_reference_ids
from xlm.synthetic import save_synthetic_checkpoint, synthetic_checkpoint

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


@pytest.fixture(scope="session", autouse=True)
def _compile_cache_in_the_temporary_directory(tmp_path_factory):
    """torch.compile's cache (default /tmp/torchinductor_$USER, left behind) under pytest's temporary directory;
    subprocesses inherit it. A cache the caller chose is kept."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("torchinductor"))
    yield
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


@pytest.fixture
def tiny_checkpoint(tmp_path: Path):
    """A factory: scaled-down preset -> directory written by transformers' save_pretrained."""

    def make(preset: str = "xlm-clm-enfr-1024", seed: int = 0) -> Path:
        return save_synthetic_checkpoint(scaled_down(PRESETS[preset]), tmp_path / preset, seed=seed)

    return make


@pytest.fixture(scope="session")
def full_size_checkpoint() -> Path:
    """The exact published xlm-clm-enfr-1024 architecture with seeded random weights (567 MB): written once into
    the synthetic-checkpoint cache ($XLM_CACHE) and shared, so read it, never write to it."""
    return synthetic_checkpoint(FULL_SIZE, seed=0)


def seeded_model(config: XLMConfig, seed: int = 0) -> XLM:
    """An XLM in eval mode with seeded random weights, its LayerNorms and biases moved off their initial 1s and 0s
    so that every parameter matters to the output."""
    torch.manual_seed(seed)
    model = XLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_ids(vocab_size: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Ids from [14, V): no special ids, so that transformers cannot mistake one for padding."""
    return torch.randint(14, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# --- Offline hub: a hand-built huggingface_hub cache, and no network ------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Any network attempt (a DNS lookup, a connection) raises, and fails the test when it ends.

    Raising alone is not enough: huggingface_hub catches connection errors and falls back to its cache, so the
    attempts are recorded and checked at teardown.
    """
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(tuple(a for a in args if not isinstance(a, socket.socket)))
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"the test tried to reach the network: {attempts}"


class FakeHubCache:
    """huggingface_hub's cache layout, written by hand: models--ORG--NAME/{refs/REF, blobs/ID, snapshots/COMMIT/}.

    As in the real cache, snapshot files are relative symlinks to blobs; a large (LFS) file's blob is named by
    its sha256, a small (git) file's by its git blob sha1.
    """

    LFS_SUFFIXES = (".safetensors", ".bin")

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo_id: str, commit: str, files: dict[str, Path | bytes], refs: tuple[str, ...] = ("main",)) -> Path:
        """Publish `files` (name -> path or content) as `commit`, pointed to by `refs`; returns the snapshot."""
        repo = self.root / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for name, content in files.items():
            staged = repo / "blobs" / "staged"
            if isinstance(content, Path):
                shutil.copyfile(content, staged)  # streamed: weights can be full size
            else:
                staged.write_bytes(content)
            blob_id = self._blob_id(staged, lfs=name.endswith(self.LFS_SUFFIXES))
            staged.rename(repo / "blobs" / blob_id)
            (snapshot / name).symlink_to(Path("../../blobs") / blob_id)
        (repo / "refs").mkdir(exist_ok=True)
        for ref in refs:
            (repo / "refs" / ref).write_text(commit)
        return snapshot

    @staticmethod
    def _blob_id(path: Path, lfs: bool) -> str:
        digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch, no_network) -> FakeHubCache:
    """An empty hub cache that huggingface_hub uses by default in this test (and no network)."""
    from huggingface_hub import constants

    cache = FakeHubCache(tmp_path / "hub-cache")
    cache.root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache.root))
    return cache


# ---- file permissions, which root ignores ------------------------------------------------------------------

# Root reads and writes any file whatever its permissions, through two capabilities; util-linux's setpriv runs a
# command without them, so that the kernel refuses it what it would refuse any user.
AS_UNPRIVILEGED = [
    "setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
]  # fmt: skip


def unprivileged_prefix() -> list[str]:
    """A command prefix under which file permissions apply, to root too (skips, or fails in CI, if impossible)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        skip_or_fail("running as root without setpriv: permissions cannot be refused", required=env_flag("CI"))
    return AS_UNPRIVILEGED


# ---- outside data: the enfr BPE files, gettext catalogs, fastBPE ---------------------------------------


def env_flag(name: str) -> bool:
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
        skip_or_fail(f"no codes_enfr/vocab_enfr in {directory} (set XLM_ENFR_VOCAB)", required=env_flag("CI"))
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
        skip_or_fail("transformers is not installed (pip install 'xlm[test]')", required=env_flag("CI"))
    transformers.utils.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="session")
def enfr_transformers_tokenizer(transformers_module, enfr_tokenizer_dir: Path):
    """transformers' `XLMTokenizer` on the enfr files, configured as on the hub: the reference."""
    return transformers_module.XLMTokenizer.from_pretrained(enfr_tokenizer_dir)


@pytest.fixture(scope="session")
def transformers_ids():
    """`transformers_ids(hf, text, lang, add_special_tokens=True)`: transformers' reference ids, with `lang`
    reaching Moses (xlm.parity.transformers_reference_ids)."""
    return transformers_reference_ids


@pytest.fixture(scope="session")
def gettext_text(report) -> dict[str, list[str]]:
    """Real English and French lines from the system's French gettext catalogs: {"en": [...], "fr": [...]}."""
    corpus = gettext_corpus() if LOCALE_DIR.is_dir() else {}
    if not corpus.get("en") or not corpus.get("fr"):
        skip_or_fail(f"no gettext catalogs in {LOCALE_DIR}", required=env_flag("CI"))
    report(f"gettext corpus: {len(corpus['en']):,} English and {len(corpus['fr']):,} French lines ({LOCALE_DIR})")
    return corpus


@pytest.fixture(scope="session")
def require_fastbpe() -> None:
    """Use in tests of the fastBPE backend: skips without it, fails without it when XLM_REQUIRE_FASTBPE=1."""
    if not fastbpe_installed():
        skip_or_fail(
            "fastBPE is not installed (pip install -U setuptools wheel cython && "
            "pip install --no-build-isolation fastBPE)",
            required=env_flag("XLM_REQUIRE_FASTBPE"),
        )
