"""The paper's three objectives (Lample & Conneau 2019, section 3), as losses of `xlm.model.XLM` itself.

3.2 Causal language modelling (CLM): predict each token from the ones before it, on streams of `bptt` tokens
    (`xlm.data.StreamBatches`), attention causal.                                                  -> clm_loss
3.3 Masked language modelling (MLM): on the same streams, select 15% of the positions (`word_pred`), replace
    80% of those by the mask `<special1>`, 10% by a random token, keep 10% (`word_mask_keep_rand`), and
    predict the original tokens, attention bidirectional. Selection is uniform, or weighted by the inverse
    square root of token frequency (`sample_alpha` 0.5) to favour rare tokens.    -> mask_for_mlm, mlm_loss
3.4 Translation language modelling (TLM): MLM on a sentence and its translation concatenated
    (`xlm.data.PairBatches`: languages per position, positions restarting at the second sentence), so that
    the model can look at the other language to fill a mask.                    -> mlm_loss on a pair batch

Every loss returns (sum over predicted tokens, number of predicted tokens): the caller divides by the count of
the whole global batch, so that gradient accumulation and several processes give the single-process mean.
The LM head runs on the predicted positions only, and the cross-entropy in fp32, as in the original.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from xlm.data import TrainBatch
from xlm.errors import InputError
from xlm.inputs import SPECIAL_TOKENS
from xlm.model import XLM

IGNORE = -100  # the label of a position that is not predicted (cross_entropy's and transformers' ignore_index)


# --- 3.2 CLM ------------------------------------------------------------------------------------------------


def next_token_targets(batch: TrainBatch) -> Tensor:
    """(B, T-1) bool: position t predicts token t+1 wherever both are real (the original's
    `pred_mask = alen < lengths - 1`: on a stream batch, every position but the last)."""
    real = batch.attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


def clm_states(model: XLM, batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """Causal attention; (hidden states (P, C), targets (P,)) of the P predicted positions."""
    h = model.encode(
        batch.input_ids, batch.langs, causal=True, attention_mask=batch.attention_mask, positions=batch.positions
    )  # (B, T, C)
    predicted = next_token_targets(batch)  # (B, T-1)
    return h[:, :-1][predicted], batch.input_ids[:, 1:][predicted]


def clm_predictions(model: XLM, batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """(logits (P, V), targets (P,)) of the P predicted positions: the head on (P, C) only."""
    h, targets = clm_states(model, batch)
    return model.logits(h), targets


def clm_loss(model: XLM, batch: TrainBatch) -> tuple[Tensor, int]:
    """Next-token prediction (the original's `clm_step`): (summed cross-entropy, number of predicted tokens)."""
    return summed_cross_entropy(*clm_predictions(model, batch))


# --- 3.3 MLM ------------------------------------------------------------------------------------------------


def smoothed_selection_weights(counts: Tensor, sample_alpha: float = 0.5, *, pad_id: int = 2) -> Tensor:
    """Per-token selection weights count^-sample_alpha (V,): the paper's "square root of inverse frequency".

    counts (V,): token frequencies in the training data (`xlm.data.PreparedData.token_counts`). The special
    tokens (ids 0..13, `<pad>` included) and unseen tokens get weight 0: the original's dictionary counts them 0
    (its `mask_scores`).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    weights = counts.clamp(min=1) ** -sample_alpha  # (V,)
    weights[counts == 0] = 0.0
    weights[: len(SPECIAL_TOKENS)] = 0.0
    weights[pad_id] = 0.0
    return weights


def mask_for_mlm(
    input_ids: Tensor,
    attention_mask: Tensor,
    generator: torch.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    word_pred: float = 0.15,
    word_mask_keep_rand: Sequence[float] = (0.8, 0.1, 0.1),
    selection_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw the MLM mask (the original's `Trainer.mask_out`): (masked input_ids (B, T), predicted (B, T) bool).
    Padding and position 0 are never predicted.

    selection_weights None: each position is selected with probability `word_pred` (the original's default,
        sample_alpha 0). Given (V,) weights (`smoothed_selection_weights`): exactly ceil(word_pred * real
        tokens) positions are drawn without replacement, each with its token's weight (the original counts the
        padding in that number too, and drops position 0 after drawing; here it is never drawn).
    Of the selected positions, word_mask_keep_rand = (mask, keep, random) are the chances of becoming `mask_id`,
    staying, or becoming a uniformly random id of the whole vocabulary. Random draws come from `generator`
    (on its device); the results are on input_ids' device.
    """
    probs = torch.tensor(word_mask_keep_rand, dtype=torch.float, device=generator.device)
    if probs.shape != (3,) or probs.min() < 0 or probs.sum() <= 0:
        raise InputError(f"word_mask_keep_rand must be 3 chances (mask, keep, random), got {word_mask_keep_rand}")
    if not 0 <= word_pred <= 1:
        raise InputError(f"word_pred is a fraction of the positions, got {word_pred}")
    ids = input_ids.to(generator.device)
    predicted = _select(ids, attention_mask.to(generator.device), generator, word_pred, selection_weights)
    masked = ids.clone()
    masked[predicted] = _replace(ids[predicted], generator, probs, mask_id, vocab_size)
    return masked.to(input_ids.device), predicted.to(input_ids.device)


def _select(ids: Tensor, attention_mask: Tensor, generator, word_pred: float, weights: Tensor | None) -> Tensor:
    """(B, T) bool: the positions to predict, word_pred of the real ones but position 0."""
    B, T = ids.shape
    eligible = attention_mask.bool().clone()  # (B, T)
    eligible[:, 0] = False
    if weights is None:  # uniform: each position on its own
        return (torch.rand(B, T, generator=generator, device=ids.device) < word_pred) & eligible
    position_weights = weights.to(ids.device)[ids] * eligible  # (B, T)
    n_targets = min(math.ceil(word_pred * int(attention_mask.sum())), int((position_weights > 0).sum()))
    predicted = torch.zeros(B * T, dtype=torch.bool, device=ids.device)
    if n_targets > 0:
        chosen = torch.multinomial(position_weights.flatten(), n_targets, replacement=False, generator=generator)
        predicted[chosen] = True
    return predicted.view(B, T)  # (B * T,) -> (B, T)


def _replace(originals: Tensor, generator, probs: Tensor, mask_id: int, vocab_size: int) -> Tensor:
    """(P,) selected ids -> what the model reads there: the mask, the id itself, or a random id (80/10/10)."""
    u = torch.rand(originals.shape, generator=generator, device=originals.device) * probs.sum()
    kind = torch.searchsorted(probs.cumsum(0), u, right=True).clamp(max=2)  # (P,): 0 mask, 1 keep, 2 random
    random_ids = torch.randint(vocab_size, originals.shape, generator=generator, device=originals.device)
    return torch.where(kind == 0, mask_id, torch.where(kind == 1, originals, random_ids))


def mask_batch(batch: TrainBatch, generator: torch.Generator, **mask_options) -> TrainBatch:
    """The batch with its MLM mask drawn (`mask_for_mlm`'s options): masked input_ids, and labels holding the
    original id at each predicted position, IGNORE elsewhere. Draw it on the global batch, then take `rows`:
    every process then sees the mask a single process would."""
    masked, predicted = mask_for_mlm(batch.input_ids, batch.attention_mask, generator, **mask_options)
    labels = torch.where(predicted, batch.input_ids, IGNORE)  # (B, T)
    return TrainBatch(masked, batch.langs, batch.positions, batch.attention_mask, labels)


# --- 3.3 MLM and 3.4 TLM: the loss --------------------------------------------------------------------------


def mlm_states(model: XLM, batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """Bidirectional attention on a masked batch; (hidden states (P, C), targets (P,)) of the P masked positions."""
    if batch.labels is None:
        raise InputError("the batch has no MLM mask: draw one with xlm.objectives.mask_batch")
    h = model.encode(
        batch.input_ids, batch.langs, causal=False, attention_mask=batch.attention_mask, positions=batch.positions
    )  # (B, T, C)
    predicted = batch.labels != IGNORE  # (B, T)
    return h[predicted], batch.labels[predicted]


def mlm_predictions(model: XLM, batch: TrainBatch) -> tuple[Tensor, Tensor]:
    """(logits (P, V), targets (P,)) of the P masked positions: the head on (P, C) only."""
    h, targets = mlm_states(model, batch)
    return model.logits(h), targets


def mlm_loss(
    model: XLM, batch: TrainBatch, generator: torch.Generator | None = None, **mask_options
) -> tuple[Tensor, int]:
    """Masked-token prediction (the original's `mlm_step`): MLM on a stream batch, TLM on a pair batch.

    batch: masked already (`mask_batch`, labels set), or masked here with `generator` and `mask_options`
    (mask_id and vocab_size default to the model's). Returns (summed cross-entropy, number of predicted tokens).
    """
    if batch.labels is None and generator is not None:
        options = {"mask_id": model.config.mask_id, "vocab_size": model.config.vocab_size, **mask_options}
        batch = mask_batch(batch, generator, **options)
    return summed_cross_entropy(*mlm_predictions(model, batch))


def summed_cross_entropy(logits: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    """(sum of -log p(target), count): each token's loss in fp32 whatever the logits' dtype (the original's
    `scores.float()`), added up in float64, so that a global batch split over micro-batches or processes sums
    to the same value (~1e-15 apart; an fp32 sum of thousands of losses is ~1e-6 apart)."""
    losses = F.cross_entropy(logits.float(), targets, reduction="none")  # (P,)
    return losses.double().sum(), targets.numel()


def predicted_tokens(batch: TrainBatch, *, causal: bool) -> int:
    """How many tokens the loss over this batch predicts (CLM if causal, else MLM/TLM on a masked batch): the
    divisor of a global batch whose rows are summed in several micro-batches or processes."""
    if causal:
        return int(next_token_targets(batch).sum())
    if batch.labels is None:
        raise InputError("the batch has no MLM mask: draw one with xlm.objectives.mask_batch")
    return int((batch.labels != IGNORE).sum())
