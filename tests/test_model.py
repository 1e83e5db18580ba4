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


def test_kv_cache_rewinds_to_an_earlier_slot(model):
    """The promise of KVCache: writing at an earlier start_pos replaces those slots, and what was decoded after
    them is never seen again (beam search and speculative decoding need this)."""
    ids = random_ids(CONFIG.vocab_size, (1, 10))
    other = random_ids(CONFIG.vocab_size, (1, 3), seed=1)
    cache = model.new_cache(batch_size=1, max_len=10)
    with torch.no_grad():
        model(ids[:, :7], 0, causal=True, cache=cache, start_pos=0)
        model(ids[:, 7:10], 0, causal=True, cache=cache, start_pos=7)  # one continuation, then back to slot 7
        rewound = [model(other[:, t : t + 1], 0, causal=True, cache=cache, start_pos=7 + t) for t in range(3)]
        full = model(torch.cat([ids[:, :7], other], dim=1), 0, causal=True)
        first = model(ids, 0, causal=True)
    torch.testing.assert_close(torch.cat(rewound, dim=1), full[:, 7:], rtol=0, atol=TOL)
    assert (full[:, 7:] - first[:, 7:]).abs().max() > 1e-2  # the abandoned continuation would have shown


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


def test_init_weights_gives_the_original_statistics():
    """Embeddings N(0, C^-1/2) with a zero padding row (the original's `Embedding`), nn.Linear's default
    U(-1/sqrt(I), 1/sqrt(I)) (the original leaves it), LayerNorm 1 and 0, a zero output bias."""
    C = 256
    torch.manual_seed(0)
    model = XLM(dataclasses.replace(CONFIG, vocab_size=2000, dim=C, n_heads=8))
    words = model.embeddings.weight.detach()
    assert torch.equal(words[CONFIG.pad_id], torch.zeros(C))
    for table in (torch.cat([words[: CONFIG.pad_id], words[CONFIG.pad_id + 1 :]]), model.position_embeddings.weight):
        assert abs(table.mean().item()) < 1e-3 and table.std().item() == pytest.approx(C**-0.5, rel=0.01)
    assert model.lang_embeddings.weight.std().item() == pytest.approx(C**-0.5, rel=0.1)  # 2 x 256 values only
    for lin in (model.blocks[0].attention.q_lin, model.blocks[1].ffn.lin1, model.blocks[1].ffn.lin2):
        bound = lin.in_features**-0.5
        assert lin.weight.abs().max().item() <= bound and lin.bias.abs().max().item() <= bound
        assert lin.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)  # a uniform's std
    norms = [model.layer_norm_emb, *(n for b in model.blocks for n in (b.layer_norm1, b.layer_norm2))]
    assert all(torch.equal(n.weight, torch.ones(C)) and torch.equal(n.bias, torch.zeros(C)) for n in norms)
    assert torch.equal(model.output_bias, torch.zeros(2000))


def test_tlm_positions_restart_for_the_second_sentence_as_in_transformers(tiny_checkpoint):
    """TLM (the paper's section 3.3): an English sentence and its French translation in one row, positions
    restarting at 0 for the second and a language id per position. Explicit `positions` give transformers'
    logits (its `position_ids`), and differ from the default positions (so they are not ignored)."""
    from xlm.checkpoint import load_pretrained
    from xlm.parity import load_transformers_model

    path = tiny_checkpoint("xlm-mlm-tlm-xnli15-1024")
    ours, theirs = load_pretrained(path), load_transformers_model(path)
    en, fr = ours.config.lang2id["en"], ours.config.lang2id["fr"]
    ids = random_ids(ours.config.vocab_size, (2, 11))
    positions = torch.cat([torch.arange(5), torch.arange(6)]).expand(2, 11)  # (2, 11): 0..4, then 0..5
    langs = torch.tensor([en] * 5 + [fr] * 6).expand(2, 11)  # (2, 11)
    with torch.no_grad():
        mine = ours(ids, langs, causal=False, positions=positions)
        expected = theirs(input_ids=ids, langs=langs, position_ids=positions).logits
        default = ours(ids, langs, causal=False)
    torch.testing.assert_close(mine, expected, rtol=0, atol=TOL)
    assert (mine - default).abs().max() > 1e-2


def test_tied_head_uses_the_embeddings(model):
    h = torch.randn(3, CONFIG.dim)
    expected = h @ model.embeddings.weight.T + model.output_bias
    torch.testing.assert_close(model.logits(h), expected)
    assert "output_bias" in dict(model.named_parameters()) and len(model.state_dict()) == 5 + 16 * 2 + 1
