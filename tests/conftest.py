"""Shared fixtures: seeded random checkpoints that transformers itself writes (tiny and full size)."""

from __future__ import annotations

import dataclasses
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
