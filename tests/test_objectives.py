"""The objectives (xlm/objectives.py) against transformers, and the MLM mask's statistics against their laws.

Loss parity: our (sum, count) losses on xlm.model.XLM, loaded through xlm.load_pretrained, against transformers'
`XLMWithLMHeadModel(labels=...)` on the same seeded checkpoint, which computes the mean cross-entropy over the
positions whose label is not -100 and does not shift labels: MLM/TLM labels sit at the masked positions, CLM
labels are the next token (shifted here). transformers attends causally only with `config.causal=True`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xlm.checkpoint import load_pretrained, map_key
from xlm.data import Corpus, PairBatches, ParallelCorpus, StreamBatches, TrainBatch
from xlm.errors import InputError
from xlm.objectives import (
    IGNORE,
    clm_loss,
    mask_batch,
    mask_for_mlm,
    mlm_loss,
    predicted_tokens,
    smoothed_selection_weights,
)

LOSS_TOL = 1e-6  # fp32, on a loss of ~6 nats: a few ulps of the mean
GRAD_TOL = 1e-5  # fp32, relative to the gradient's norm: summation order differs between the two models


def random_corpus(lang: str, n: int, vocab_size: int, seed: int, max_len: int = 12) -> Corpus:
    rng = np.random.default_rng(seed)
    return Corpus.from_sentences(lang, [rng.integers(14, vocab_size, rng.integers(1, max_len)) for _ in range(n)])


def models(tiny_checkpoint, transformers_module, causal: bool):
    """Ours through the production loader and transformers' from the same files; dropout off (eval mode)."""
    path = tiny_checkpoint("xlm-clm-enfr-1024", seed=3)
    ours = load_pretrained(path).eval()
    theirs = transformers_module.XLMWithLMHeadModel.from_pretrained(path, causal=causal).eval()
    assert theirs.transformer.causal is causal
    return ours, theirs


def transformers_loss(model, batch: TrainBatch, labels: torch.Tensor) -> torch.Tensor:
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask.long(),
        langs=batch.langs,
        position_ids=batch.positions,
        labels=labels,
    )
    return out.loss


def assert_same_loss_and_gradients(ours, theirs, our_sum_count, their_loss) -> None:
    total, count = our_sum_count
    assert count > 0
    loss = total / count
    assert abs(loss.item() - their_loss.item()) <= LOSS_TOL, (loss.item(), their_loss.item())
    loss.backward()
    their_loss.backward()
    their_grads = {name: p.grad for name, p in theirs.named_parameters()}
    checked = 0
    for name, tensor in their_grads.items():
        ours_name = map_key(name)
        if ours_name is None:  # the tied head: its gradient is part of the embeddings' (the same Parameter)
            continue
        mine = ours.get_parameter(ours_name).grad
        assert mine is not None, ours_name
        if ours_name.endswith("k_lin.bias"):
            # Zero in exact arithmetic: adding q.b_k to every score of a row leaves the softmax unchanged. Both
            # are rounding noise (~1e-11, against 1e-4..1 for the other gradients); no ratio of two noises.
            assert mine.norm() <= 1e-8 and tensor.norm() <= 1e-8, (mine.norm(), tensor.norm())
            checked += 1
            continue
        error = (mine - tensor).norm() / tensor.norm()
        assert error <= GRAD_TOL, (ours_name, error.item())
        checked += 1
    assert checked == len(list(ours.parameters()))  # every parameter of ours was compared


def test_clm_loss_and_gradients_equal_transformers(tiny_checkpoint, transformers_module):
    ours, theirs = models(tiny_checkpoint, transformers_module, causal=True)
    corpus = random_corpus("en", 40, ours.config.vocab_size, seed=0)
    batch = StreamBatches(corpus, lang_id=1, eos_id=1, batch_size=3, bptt=16, seed=0).next_batch()
    labels = torch.full_like(batch.input_ids, IGNORE)
    labels[:, :-1] = batch.input_ids[:, 1:]  # transformers does not shift: position t is labelled with token t+1
    assert_same_loss_and_gradients(ours, theirs, clm_loss(ours, batch), transformers_loss(theirs, batch, labels))


def test_mlm_loss_and_gradients_equal_transformers(tiny_checkpoint, transformers_module):
    ours, theirs = models(tiny_checkpoint, transformers_module, causal=False)
    corpus = random_corpus("fr", 40, ours.config.vocab_size, seed=1)
    batch = StreamBatches(corpus, lang_id=1, eos_id=1, batch_size=3, bptt=16, seed=0).next_batch()
    masked = mask_batch(batch, torch.Generator().manual_seed(0), mask_id=5, vocab_size=ours.config.vocab_size)
    assert (masked.input_ids == 5).any() and (masked.labels != IGNORE).sum() > 3
    our_loss = mlm_loss(ours, masked)
    assert_same_loss_and_gradients(ours, theirs, our_loss, transformers_loss(theirs, masked, masked.labels))


def test_tlm_loss_and_gradients_equal_transformers(tiny_checkpoint, transformers_module):
    """TLM: padded pair rows, per-position languages, positions restarting at the second sentence."""
    ours, theirs = models(tiny_checkpoint, transformers_module, causal=False)
    V = ours.config.vocab_size
    pairs = ParallelCorpus(("en", "fr"), random_corpus("en", 12, V, seed=2), random_corpus("fr", 12, V, seed=3))
    batch = PairBatches(pairs, lang_ids=(0, 1), eos_id=1, pad_id=2, batch_size=4, seed=0).next_batch()
    assert not batch.attention_mask.all() and (batch.positions[:, 1:] == 0).any()  # padding and a restart
    weights = smoothed_selection_weights(torch.ones(V) * 100)  # the smoothed path; equal counts
    masked = mask_batch(batch, torch.Generator().manual_seed(1), mask_id=5, vocab_size=V, selection_weights=weights)
    our_loss = mlm_loss(ours, masked)
    assert_same_loss_and_gradients(ours, theirs, our_loss, transformers_loss(theirs, masked, masked.labels))


def test_mlm_loss_masks_with_a_generator_and_the_models_mask_id(tiny_checkpoint):
    ours = load_pretrained(tiny_checkpoint("xlm-clm-enfr-1024"))
    batch = StreamBatches(random_corpus("en", 30, 512, seed=4), lang_id=0, eos_id=1, batch_size=2, bptt=16).next_batch()
    drawn = mlm_loss(ours, batch, torch.Generator().manual_seed(5))
    masked = mask_batch(batch, torch.Generator().manual_seed(5), mask_id=ours.config.mask_id, vocab_size=512)
    assert torch.equal(drawn[0], mlm_loss(ours, masked)[0]) and drawn[1] == mlm_loss(ours, masked)[1]
    with pytest.raises(InputError, match="no MLM mask"):
        mlm_loss(ours, batch)


# --- The mask's statistics ------------------------------------------------------------------------------------

V = 512
MASK_ID = 5


def padded_rows(n_rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids >= 14 (none is the mask id or a special token), rows of random lengths, right-padded with 2."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(width // 4, width + 1, (n_rows,), generator=g)
    mask = torch.arange(width) < lengths[:, None]  # (B, T)
    ids = torch.randint(14, V, (n_rows, width), generator=g).masked_fill(~mask, 2)
    return ids, mask


def five_sigma(p: float, n: int) -> float:
    """5 standard deviations of a binomial proportion p over n draws: a false alarm ~1 in 1.7 million."""
    return 5 * math.sqrt(p * (1 - p) / n)


def test_uniform_selection_is_15_percent_and_80_10_10():
    generator = torch.Generator().manual_seed(0)
    eligible_total = selected_total = 0
    outcome = torch.zeros(3)  # became the mask, stayed, became another id
    random_sum, random_count = 0.0, 0
    for seed in range(20):
        ids, mask = padded_rows(128, 256, seed)
        masked, predicted = mask_for_mlm(ids, mask, generator, mask_id=MASK_ID, vocab_size=V)
        assert not predicted[~mask].any(), "padding selected"
        assert not predicted[:, 0].any(), "position 0 selected"
        assert torch.equal(masked[~predicted], ids[~predicted]), "an unselected position changed"
        eligible_total += int(mask[:, 1:].sum())
        selected_total += int(predicted.sum())
        before, after = ids[predicted], masked[predicted]
        other = after[(after != MASK_ID) & (after != before)]
        outcome += torch.tensor([(after == MASK_ID).sum(), (after == before).sum(), len(other)])
        random_sum, random_count = random_sum + float(other.sum()), random_count + len(other)
    # An id that "stayed" or "became the mask" may also be a random draw that landed there (chance 1/V each).
    expected = [0.8 + 0.1 / V, 0.1 + 0.1 / V, 0.1 * (V - 2) / V]
    assert abs(selected_total / eligible_total - 0.15) <= five_sigma(0.15, eligible_total)
    for observed, p in zip((outcome / selected_total).tolist(), expected, strict=True):
        assert abs(observed - p) <= five_sigma(p, selected_total), (observed, p)
    # Random replacements are uniform over the whole vocabulary: mean (V-1)/2, sd V/sqrt(12) per draw
    # (exactly: uniform over the V-1 ids other than the original; the shift is < 1 and ignored in the bound).
    assert abs(random_sum / random_count - (V - 1) / 2) <= 5 * V / math.sqrt(12 * random_count) + 1


def rosen_inclusion(weights: torch.Tensor, n: int) -> torch.Tensor:
    """Inclusion chances of drawing n items without replacement with these weights (successive sampling):
    1 - exp(-w t) with t solving sum(1 - exp(-w t)) = n (Rosén 1997; exact as the population grows)."""
    lo, hi = 0.0, 1.0
    while (1 - torch.exp(-weights * hi)).sum() < n:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - torch.exp(-weights * mid)).sum() < n else (lo, mid)
    return 1 - torch.exp(-weights * lo)


def test_smoothed_selection_prefers_rare_tokens_as_count_to_the_minus_alpha():
    """A rare token (count 100) is selected (10000 / 100)^0.5 = 10 times as often as a frequent one (10000).

    Weighted sampling without replacement makes inclusion only nearly proportional to weight; the batch is
    built so that the correction is small (filler tokens of count 1 carry most of the weight), the exact
    prediction comes from Rosén's formula, and its distance to the power law is checked to be under 2%.
    """
    rare, frequent, sample_alpha = 20, 21, 0.5
    counts = torch.ones(V)
    counts[rare], counts[frequent] = 100, 10_000
    weights = smoothed_selection_weights(counts, sample_alpha)
    assert weights[:14].eq(0).all() and weights[rare] == 0.1 and weights[frequent] == 0.01

    generator = torch.Generator().manual_seed(0)
    layout = torch.Generator().manual_seed(1)
    ids = torch.randint(30, V, (64, 256), generator=layout)  # fillers, count 1
    kind = torch.rand(64, 256, generator=layout)
    ids[kind < 0.25], ids[(kind >= 0.25) & (kind < 0.5)] = rare, frequent
    mask = torch.ones_like(ids, dtype=torch.bool)
    n_targets = math.ceil(0.15 * ids.numel())
    selected = torch.zeros(2)
    draws = 300
    for _ in range(draws):
        _, predicted = mask_for_mlm(ids, mask, generator, mask_id=MASK_ID, vocab_size=V, selection_weights=weights)
        assert int(predicted.sum()) == n_targets and not predicted[:, 0].any()
        selected += torch.stack([predicted[ids == rare].sum(), predicted[ids == frequent].sum()])
    eligible = torch.ones_like(ids, dtype=torch.bool)
    eligible[:, 0] = False
    occurrences = torch.stack([(ids[eligible] == rare).sum(), (ids[eligible] == frequent).sum()]) * draws
    rates = selected / occurrences
    inclusion = rosen_inclusion(weights[ids[eligible]].double(), n_targets)
    predicted_rates = torch.stack([inclusion[ids[eligible] == rare][0], inclusion[ids[eligible] == frequent][0]])
    power_law = (counts[rare] / counts[frequent]) ** -sample_alpha
    predicted_ratio = float(predicted_rates[0] / predicted_rates[1])
    assert abs(predicted_ratio / power_law - 1) < 0.02, (predicted_ratio, power_law)
    # 5 sd of the log of a ratio of two binomial rates: sqrt((1-p1)/k1 + (1-p2)/k2) (delta method).
    log_sd = math.sqrt(sum((1 - float(p)) / float(k) for p, k in zip(predicted_rates, selected, strict=True)))
    observed_ratio = float(rates[0] / rates[1])
    assert abs(math.log(observed_ratio / predicted_ratio)) <= 5 * log_sd, (observed_ratio, predicted_ratio, log_sd)


def test_smoothed_selection_never_takes_padding_or_special_tokens():
    ids, mask = padded_rows(32, 64, seed=3)
    ids[:, 5] = 1  # a </s> in every row: a special token, weight 0
    weights = smoothed_selection_weights(torch.randint(1, 1000, (V,)).double())
    for seed in range(20):
        _, predicted = mask_for_mlm(
            ids, mask, torch.Generator().manual_seed(seed), mask_id=MASK_ID, vocab_size=V, selection_weights=weights
        )
        assert not predicted[~mask].any() and not predicted[:, 0].any() and not predicted[:, 5].any()
        assert int(predicted.sum()) == math.ceil(0.15 * int(mask.sum()))


def test_the_mask_is_a_function_of_the_generator_state():
    ids, mask = padded_rows(8, 32, seed=4)
    first = mask_for_mlm(ids, mask, torch.Generator().manual_seed(7), mask_id=MASK_ID, vocab_size=V)
    again = mask_for_mlm(ids, mask, torch.Generator().manual_seed(7), mask_id=MASK_ID, vocab_size=V)
    other = mask_for_mlm(ids, mask, torch.Generator().manual_seed(8), mask_id=MASK_ID, vocab_size=V)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


def test_rows_of_a_masked_global_batch_carry_the_global_mask():
    """What each process of a data-parallel run sees: its rows of the mask drawn on the whole batch."""
    ids, mask = padded_rows(6, 16, seed=5)
    batch = TrainBatch(ids, torch.zeros_like(ids), torch.arange(16).expand(6, 16), mask)
    masked = mask_batch(batch, torch.Generator().manual_seed(0), mask_id=MASK_ID, vocab_size=V)
    halves = [masked.rows(0, 3), masked.rows(3, 6)]
    assert torch.equal(torch.cat([h.labels for h in halves]), masked.labels)
    assert torch.equal(torch.cat([h.input_ids for h in halves]), masked.input_ids)
    assert torch.equal(masked.labels[masked.labels != IGNORE], ids[masked.labels != IGNORE])


def test_bad_keep_rand_chances_are_an_input_error():
    ids, mask = padded_rows(2, 8, seed=6)
    with pytest.raises(InputError, match="word_mask_keep_rand"):
        mask_for_mlm(ids, mask, torch.Generator(), mask_id=5, vocab_size=V, word_mask_keep_rand=(0.8, 0.2))


@pytest.mark.parametrize("objective", ["clm", "tlm"])
def test_summed_losses_of_row_shares_divided_by_the_global_count_are_the_global_mean(objective, tiny_checkpoint):
    """Gradient accumulation and data parallelism: the rows of a global batch in parts, each part's summed loss
    divided by the whole batch's count (predicted_tokens), add up to the mean over the whole batch."""
    model = load_pretrained(tiny_checkpoint("xlm-clm-enfr-1024"))
    pairs = ParallelCorpus(("en", "fr"), random_corpus("en", 12, V, seed=6), random_corpus("fr", 12, V, seed=7))
    batch = PairBatches(pairs, lang_ids=(0, 1), eos_id=1, pad_id=2, batch_size=6, seed=0).next_batch()
    if objective == "clm":
        loss, causal = clm_loss, True
    else:
        batch = mask_batch(batch, torch.Generator().manual_seed(2), mask_id=MASK_ID, vocab_size=V)
        loss, causal = mlm_loss, False
    total, count = loss(model, batch)
    assert count == predicted_tokens(batch, causal=causal) > 0
    parts = [batch.rows(0, 1), batch.rows(1, 4), batch.rows(4, len(batch))]
    assert sum(predicted_tokens(p, causal=causal) for p in parts) == count
    accumulated = sum(loss(model, part)[0] / count for part in parts)
    assert abs(accumulated.item() - (total / count).item()) <= LOSS_TOL
