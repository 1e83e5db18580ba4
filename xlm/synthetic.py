"""Seeded random checkpoints written by transformers itself: the offline stand-in for published weights.

Published weights cannot be downloaded everywhere (CI, air-gapped machines), but parity does not need trained
values: it needs the exact architecture and a file that transformers wrote. `save_synthetic_checkpoint` builds
transformers' `XLMWithLMHeadModel` with a preset's configuration, gives *every* parameter seeded random values
(LayerNorm gains and all biases included, so that a swapped or ignored tensor cannot go unnoticed), and saves
it with `save_pretrained`. transformers is imported here only: it is a test and parity dependency, not a
runtime one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xlm.config import XLMConfig
from xlm.errors import XLMError


def import_transformers():
    """transformers, or a one-line error saying how to get it."""
    try:
        import transformers
    except ImportError:
        raise XLMError("this needs transformers (the reference implementation): pip install 'xlm[test]'") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def hf_model_from_config(config: XLMConfig, seed: int = 0):
    """transformers' `XLMWithLMHeadModel` with `config`'s architecture and seeded random values, in eval mode."""
    transformers = import_transformers()
    hf_config = transformers.XLMConfig(**config.to_hf_config())
    torch.manual_seed(seed)
    model = transformers.XLMWithLMHeadModel(hf_config)
    randomize_(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values of a trained model's scale (weights ~N(0, 0.02..), gains ~1)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if "layer_norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * noise  # LayerNorm gains around 1
        elif name.endswith(".bias"):
            value = 0.02 * noise
        elif "embeddings" in name:
            value = param.size(-1) ** -0.5 * noise  # XLM's embedding init, N(0, C^-1/2)
        else:
            value = 0.02 * noise
        param.copy_(value)
    pad_id = getattr(model.config, "pad_token_id", None)
    if pad_id is not None:
        model.get_input_embeddings().weight[pad_id].zero_()  # as nn.Embedding(padding_idx=...) keeps it


def save_synthetic_checkpoint(config: XLMConfig, directory: str | Path, seed: int = 0) -> Path:
    """Write a seeded random transformers checkpoint of `config`'s architecture; returns the directory.

    Name the directory after the preset (e.g. `.../xlm-clm-enfr-1024`) and loaders recover the objective.
    """
    directory = Path(directory)
    hf_model_from_config(config, seed).save_pretrained(directory)
    return directory
