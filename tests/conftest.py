"""Shared fixtures: seeded random checkpoints that transformers itself writes (tiny and full size)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import socket
from pathlib import Path

import pytest
import torch

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
