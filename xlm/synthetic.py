"""Seeded random checkpoints written by transformers itself: the offline stand-in for published weights.

Published weights cannot be downloaded everywhere (CI, air-gapped machines), but parity does not need trained
values: it needs the exact architecture and a file that transformers wrote. `save_synthetic_checkpoint` builds
transformers' `XLMWithLMHeadModel` with a preset's configuration, gives *every* parameter seeded random values
(LayerNorm gains and all biases included, so that a swapped or ignored tensor cannot go unnoticed), and saves
it with `save_pretrained`. transformers is imported here only: it is a test and parity dependency, not a
runtime one.

A synthetic checkpoint also gets a character-level tokenizer in the transformers layout (`vocab.json`,
`merges.txt` with no merges, `tokenizer_config.json`), so that text-level tools run on it offline. The real
BPE vocabularies are third-party data that come with the real checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

from xlm.config import PRESETS, XLMConfig
from xlm.errors import XLMError
from xlm.inputs import SPECIAL_TOKENS

# Characters of the synthetic tokenizer: printable ASCII and the Latin-1 letters (French, German, ...).
ALPHABET = [c for c in string.printable if not c.isspace()] + [
    chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)
]
# The hub tokenizer configs ask for lowercasing and accent removal, except for these two.
CASED_TOKENIZER = {"xlm-mlm-17-1280", "xlm-mlm-100-1280"}


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


def save_synthetic_tokenizer(config: XLMConfig, directory: Path, lowercase: bool = True) -> None:
    """A character-level tokenizer in transformers' layout: each character is a piece, `c` or word-final `c</w>`.

    Ids: the 14 specials, then the pieces, then `<unused{i}>` fillers up to the model's vocabulary size.
    """
    pieces = [*SPECIAL_TOKENS] + [piece for c in ALPHABET for piece in (c, c + "</w>")]
    if len(pieces) > config.vocab_size:
        raise XLMError(f"a synthetic tokenizer needs a vocabulary of >= {len(pieces)}, not {config.vocab_size}")
    pieces += [f"<unused{i}>" for i in range(config.vocab_size - len(pieces))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, indent=2) + "\n")
    (directory / "merges.txt").write_text("")
    tokenizer_config = {
        "do_lowercase_and_remove_accent": lowercase,
        "id2lang": {str(i): name for i, name in enumerate(config.languages)},
        "lang2id": config.lang2id,
        "model_max_length": config.max_positions,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def save_synthetic_checkpoint(
    config: XLMConfig, directory: str | Path, seed: int = 0, *, tokenizer: bool = True
) -> Path:
    """Write a seeded random transformers checkpoint of `config`'s architecture; returns the directory.

    Name the directory after the preset (e.g. `.../xlm-clm-enfr-1024`) and loaders recover the objective.
    """
    directory = Path(directory)
    hf_model_from_config(config, seed).save_pretrained(directory)
    if tokenizer:
        save_synthetic_tokenizer(config, directory, lowercase=directory.name not in CASED_TOKENIZER)
    return directory


def synthetic_checkpoint(preset: str, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """The synthetic checkpoint of a preset, written once into a cache and reused (tools, tests, benchmarks).

    The cache is `cache_dir`, else `$XLM_CACHE`, else `~/.cache/xlm`; a checkpoint appears there only when
    complete (written to a temporary directory, then renamed).
    """
    if preset not in PRESETS:
        raise XLMError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    root = Path(cache_dir or os.environ.get("XLM_CACHE") or Path.home() / ".cache" / "xlm") / "synthetic"
    final = root / f"seed{seed}" / preset
    if not (final / "config.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".partial-") as tmp:
            written = save_synthetic_checkpoint(PRESETS[preset], Path(tmp) / preset, seed)
            try:
                written.rename(final)
            except OSError:  # another process finished first: keep theirs
                shutil.rmtree(written, ignore_errors=True)
    return final
