"""What the model reads besides its weights: special ids, padded batches, the attention mask, language ids.

Everything that turns "some sentences in some languages" into the tensors `XLM.encode` takes, and every check of
those tensors, lives here, so that the model (xlm/model.py), generation, scoring and the tokenizer agree on one
rule for each:

- special tokens: XLM's `Dictionary` puts `<s> </s> <pad> <unk> <special0>..<special9>` at ids 0..13, and
  `<special1>` (5) is the mask; a checkpoint's config repeats the ones the model needs (`XLMConfig.pad_id`, ...);
- padding: `pad_ids` pads id lists on the left (generation: every row's last token in the last column) or on the
  right (scoring); `Batch` is what the tokenizer returns, passed by name (`model(**batch, causal=True)`);
- the attention mask's default: a position is real unless its id is `<pad>` (`real_tokens`);
- language ids: one id, one per row (B,) or one per position (B, T), integers only, within the model's languages
  (`language_ids`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from xlm.config import XLMConfig
from xlm.errors import InputError

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", *(f"<special{i}>" for i in range(10)))  # ids 0..13
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 0, 1, 2, 3
MASK_ID = 5  # <special1>


# --- Padded batches -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
    """Padded model inputs for B texts of at most T tokens, passed by name: `model(**batch, causal=True)`.

    input_ids       (B, T) long   token ids, `<pad>` (2) where a row is shorter than T
    attention_mask  (B, T)        1/True for a real token, 0/False for padding (the tokenizer gives long, like
                                  transformers' tokenizers)
    langs           (B, T) long   language id of every position, padding included (as in XLM's training);
                                  None for models without language embeddings

    transformers' `XLMWithLMHeadModel` takes the same three names (`model(**batch)`).
    """

    input_ids: Tensor
    attention_mask: Tensor
    langs: Tensor | None

    @property
    def lengths(self) -> Tensor:
        """(B,) long: the number of real tokens in each row."""
        return self.attention_mask.long().sum(dim=1)

    def keys(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self)]

    def __getitem__(self, name: str) -> Tensor | None:
        return getattr(self, name)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{name: None if self[name] is None else self[name].to(device) for name in self.keys()})


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID, *, side: str) -> tuple[Tensor, Tensor]:
    """Id lists -> input_ids (B, T) padded on `side` ("left" or "right") with pad_id, attention_mask (B, T) bool."""
    if side not in ("left", "right"):
        raise InputError(f"side must be 'left' or 'right', got {side!r}")
    if not sequences or any(len(ids) == 0 for ids in sequences):
        raise InputError("every sequence needs at least one token")
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for row, ids in enumerate(sequences):
        real = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, real] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, real] = True
    return input_ids, attention_mask


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Prompts of different lengths -> input_ids (B, T) padded on the left, attention_mask (B, T) bool."""
    return pad_ids(sequences, pad_id, side="left")


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Sentences to score -> input_ids (B, T) padded on the right, attention_mask (B, T) bool."""
    return pad_ids(sequences, pad_id, side="right")


# --- Checks and defaults ------------------------------------------------------------------------------------


def check_input_ids(input_ids: Tensor) -> tuple[int, int]:
    """(B, T) integer ids with B, T >= 1 -> (B, T); anything else is a one-line InputError."""
    if (
        not isinstance(input_ids, Tensor)
        or input_ids.dim() != 2
        or input_ids.dtype not in (torch.int64, torch.int32)
        or input_ids.numel() == 0
    ):
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise InputError(f"input_ids must be a non-empty (B, T) integer tensor, got {shape}")
    return input_ids.size(0), input_ids.size(1)


def real_tokens(input_ids: Tensor, attention_mask: Tensor | None, pad_id: int) -> Tensor:
    """Which positions hold real tokens, (B, T) bool: `attention_mask` (1/True = real), by default every id that
    is not `<pad>`."""
    if attention_mask is None:
        return input_ids.ne(pad_id)
    if attention_mask.shape != input_ids.shape:
        raise InputError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    return attention_mask.to(input_ids.device).bool()


def language_ids(config: XLMConfig, langs: Tensor | int | None, B: int, T: int, device) -> Tensor | None:
    """One id, (B,), (B, 1) or (B, T) language ids -> (B, T) long; None for a model without language embeddings.

    Ids must be integers: a float would be truncated to another language without a word. A (B,) tensor is one id
    per row, never one per position, even when B = T.
    """
    if not config.has_lang_embeddings:
        return None  # a model trained without language embeddings ignores them, as in the original
    if langs is None:
        names = ", ".join(f"{n}={i}" for n, i in config.lang2id.items())
        raise InputError(f"this model has language embeddings ({names}): pass langs")
    if isinstance(langs, bool) or (isinstance(langs, Tensor) and langs.dtype == torch.bool):
        raise InputError("langs must be integer language ids, not booleans")
    given = torch.as_tensor(langs, device=device)
    if given.is_floating_point() or given.is_complex():
        raise InputError(f"langs must be integer language ids, got {given.dtype} (a float would be truncated)")
    given = given.long()
    if given.shape not in ((), (B,), (B, 1), (B, T)):
        raise InputError(f"langs must be one id, (B,) or (B, T) = ({B}, {T}); got {tuple(given.shape)}")
    if given.dim() == 1:
        given = given[:, None]  # (B, 1): one id per row
    return given.expand(B, T)


def check_ranges(config: XLMConfig, input_ids: Tensor, positions: Tensor, langs: Tensor | None) -> None:
    """Ids, positions and language ids inside their tables: a clear error instead of an index error deep inside.

    Skipped while torch.compile traces (reading a value back to Python would break the graph): compiled code
    checks its inputs before the compiled call, as `generate` does.
    """
    if torch.compiler.is_compiling():
        return
    if positions.shape != input_ids.shape:
        raise InputError(f"positions must be (B, T) = {tuple(input_ids.shape)}, got {tuple(positions.shape)}")
    checked = [input_ids, positions] if langs is None else [input_ids, positions, langs]
    extremes = torch.stack([value for t in checked for value in torch.aminmax(t)]).tolist()  # one read-back
    (id_min, id_max), (pos_min, pos_max) = extremes[0:2], extremes[2:4]
    if id_min < 0 or id_max >= config.vocab_size:
        raise InputError(f"token ids must be in 0..{config.vocab_size - 1}")
    if pos_min < 0 or pos_max >= config.max_positions:
        raise InputError(f"positions must be (B, T) in 0..{config.max_positions - 1}: XLM has learned positions")
    if langs is not None and (extremes[4] < 0 or extremes[5] >= config.n_langs):
        raise InputError(f"language ids must be in 0..{config.n_langs - 1} ({', '.join(config.languages)})")


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Batch",
    "check_input_ids",
    "check_ranges",
    "language_ids",
    "left_pad",
    "pad_ids",
    "real_tokens",
    "right_pad",
]
