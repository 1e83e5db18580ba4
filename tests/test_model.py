"""Behaviour of xlm.model on its own: padding, language ids, the KV cache, input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_ids, seeded_model

from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.model import XLM, attention_allowed, attention_reference, attention_sdpa

CONFIG = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=211, dim=32, n_layers=2, n_heads=4)
TOL = 1e-5  # fp32: different padding layouts change the matmul shapes, not the math


@pytest.fixture
def model() -> XLM:
    return seeded_model(CONFIG)


def pad(ids: torch.Tensor, n: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One row (T,) -> padded (1, T + n) and its mask."""
    pads = torch.full((n,), CONFIG.pad_id)
    padded = torch.cat([pads, ids]) if side == "left" else torch.cat([ids, pads])
    return padded[None], padded[None].ne(CONFIG.pad_id)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_changes_no_real_token(model, causal, side):
    ids = random_ids(CONFIG.vocab_size, (1, 12))[0]
    with torch.no_grad():
        alone = model(ids[None], 1, causal=causal)[0]  # (T, V)
        padded_ids, mask = pad(ids, 5, side)
        padded = model(padded_ids, 1, causal=causal, attention_mask=mask)[0]  # (T + 5, V)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[mask[0]], alone, rtol=0, atol=TOL)


def test_left_padding_in_a_batch_with_different_lengths(model):
    """Rows of lengths 12 and 7, the short one left-padded, equal each row run alone (causal, as generation)."""
    long_row, short_row = random_ids(CONFIG.vocab_size, (1, 12))[0], random_ids(CONFIG.vocab_size, (1, 7), 1)[0]
    short_padded, short_mask = pad(short_row, 5, "left")
    batch = torch.cat([long_row[None], short_padded])
    langs = torch.tensor([0, 1])
    with torch.no_grad():
        both = model(batch, langs, causal=True)
        alone = [model(long_row[None], 0, causal=True)[0], model(short_row[None], 1, causal=True)[0]]
    torch.testing.assert_close(both[0], alone[0], rtol=0, atol=TOL)
    torch.testing.assert_close(both[1, short_mask[0]], alone[1], rtol=0, atol=TOL)


def test_padded_positions_are_zero_in_every_layer(model):
    ids, _ = pad(random_ids(CONFIG.vocab_size, (1, 6))[0], 3, "left")
    with torch.no_grad():
        hidden = model.encode(ids, 0, causal=True, all_layers=True)  # (L+1, 1, T, C)
    assert hidden.shape == (CONFIG.n_layers + 1, 1, 9, CONFIG.dim)
    assert hidden[:, 0, :3].abs().max() == 0 and hidden[:, 0, 3:].abs().min() > 0


def test_causal_attention_does_not_see_the_future(model):
    ids = random_ids(CONFIG.vocab_size, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = random_ids(CONFIG.vocab_size, (1, 4), seed=1)
    with torch.no_grad():
        a, b = model(ids, 0, causal=True), model(changed, 0, causal=True)
        c, d = model(ids, 0, causal=False), model(changed, 0, causal=False)
    assert torch.equal(a[0, :6], b[0, :6]) and not torch.allclose(a[0, 6:], b[0, 6:])
    assert not torch.allclose(c[0, :6], d[0, :6])  # bidirectional: the past sees the future


def test_language_ids_one_per_model_row_or_position_agree(model):
    ids = random_ids(CONFIG.vocab_size, (2, 5))
    with torch.no_grad():
        scalar = model(ids, 1, causal=True)
        per_row = model(ids, torch.tensor([1, 1]), causal=True)
        per_position = model(ids, torch.ones(2, 5, dtype=torch.long), causal=True)
        english = model(ids, 0, causal=True)
    assert torch.equal(scalar, per_row) and torch.equal(scalar, per_position)
    assert not torch.allclose(scalar, english)  # the language embedding is used


def test_language_can_change_within_a_row(model):
    ids = random_ids(CONFIG.vocab_size, (1, 6))
    mixed = torch.tensor([[0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        out = model(ids, mixed, causal=True)
        english = model(ids, 0, causal=True)
    assert torch.equal(out[0, :3], english[0, :3]) and not torch.allclose(out[0, 3:], english[0, 3:])


def test_kv_cache_equals_full_forward(model):
    """Prefill 7 positions, then decode 5 one at a time: the same logits as one causal forward."""
    ids = random_ids(CONFIG.vocab_size, (2, 12))
    langs = torch.tensor([0, 1])
    cache = model.new_cache(batch_size=2, max_len=12)
    with torch.no_grad():
        full = model(ids, langs, causal=True)
        steps = [model(ids[:, :7], langs, causal=True, cache=cache, start_pos=0)]
        steps += [model(ids[:, t : t + 1], langs, causal=True, cache=cache, start_pos=t) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=TOL)


def test_kv_cache_keeps_left_padding_masked(model):
    ids = random_ids(CONFIG.vocab_size, (1, 8))[0]
    padded, _ = pad(ids, 4, "left")
    cache = model.new_cache(batch_size=1, max_len=12)
    with torch.no_grad():
        alone = model(ids[None], 0, causal=True)
        model(padded[:, :9], 0, causal=True, cache=cache, start_pos=0)
        last = [model(padded[:, t : t + 1], 0, causal=True, cache=cache, start_pos=t) for t in range(9, 12)]
    torch.testing.assert_close(torch.cat(last, dim=1)[0], alone[0, 5:], rtol=0, atol=TOL)


def test_sdpa_agrees_with_the_reference_and_stays_finite_on_padded_rows():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    key_valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])  # row 0 left-padded
    for causal in (True, False):
        allowed = attention_allowed(key_valid, 0, 6, causal)
        ref, fused = attention_reference(q, k, v, allowed), attention_sdpa(q, k, v, allowed)
        assert torch.isfinite(ref).all() and torch.isfinite(fused).all()
        torch.testing.assert_close(fused, ref, rtol=0, atol=1e-6)


def test_attention_allowed_is_causal_padding_aware_and_lets_queries_see_themselves():
    key_valid = torch.tensor([[False, True, True]])
    causal = attention_allowed(key_valid, 0, 3, causal=True)[0, 0].int().tolist()
    assert causal == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    full = attention_allowed(key_valid, 0, 3, causal=False)[0, 0].int().tolist()
    assert full == [[1, 1, 1], [0, 1, 1], [0, 1, 1]]
    decode = attention_allowed(torch.tensor([[False, True, True, True]]), 3, 1, causal=True)[0, 0]
    assert decode.int().tolist() == [[0, 1, 1, 1]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.tensor([[14, 15]]), causal=True), "pass langs"),
        (lambda m: m(torch.tensor([[14, 15]]), 2, causal=True), "language ids must be in 0..1"),
        (lambda m: m(torch.tensor([[14, 211]]), 0, causal=True), "token ids must be in 0..210"),
        (lambda m: m(torch.tensor([[-1, 14]]), 0, causal=True), "token ids must be in 0..210"),
        (lambda m: m(torch.full((1, 513), 14), 0, causal=True), "positions must be (B, T) in 0..511"),
        (lambda m: m(torch.tensor([14, 15]), 0, causal=True), "non-empty (B, T) integer tensor"),
        (lambda m: m(torch.zeros(1, 0, dtype=torch.long), 0, causal=True), "non-empty (B, T)"),
        (lambda m: m(torch.tensor([[14.0]]), 0, causal=True), "integer tensor"),
        (lambda m: m(torch.tensor([[14, 15]]), torch.zeros(1, 3, dtype=torch.long), causal=True), "langs must be"),
        (lambda m: m(torch.tensor([[14]]), 0, causal=False, cache=m.new_cache(1, 4)), "pass causal=True"),
        (lambda m: m(torch.tensor([[14]]), 0, causal=True, cache=m.new_cache(2, 4)), "the cache has 2 rows"),
        (lambda m: m(torch.tensor([[14, 15]]), 0, causal=True, cache=m.new_cache(1, 4), start_pos=3), "holds 4"),
        (lambda m: m(torch.tensor([[14]]), 0, causal=True, start_pos=3), "needs a cache"),
        (lambda m: m.new_cache(1, 513), "cache length 513"),
    ],
)
def test_bad_inputs_raise_one_clear_error(model, call, message):
    with pytest.raises(InputError) as err:
        call(model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_models_without_language_embeddings_ignore_langs():
    config = dataclasses.replace(PRESETS["xlm-mlm-17-1280"], vocab_size=211, dim=32, n_layers=1, n_heads=4)
    model = XLM(config).eval()
    assert model.lang_embeddings is None
    ids = random_ids(211, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(ids, causal=False), model(ids, 3, causal=False))


def test_tied_head_uses_the_embeddings(model):
    h = torch.randn(3, CONFIG.dim)
    expected = h @ model.embeddings.weight.T + model.output_bias
    torch.testing.assert_close(model.logits(h), expected)
    assert "output_bias" in dict(model.named_parameters()) and len(model.state_dict()) == 5 + 16 * 2 + 1
