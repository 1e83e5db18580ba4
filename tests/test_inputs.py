"""xlm/inputs.py and the Python API's checks: bad input is a one-line InputError, never a raw torch error, a NaN
or a silently different answer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_ids, seeded_model

from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.generation import generate, sample_next
from xlm.inputs import Batch, language_ids, left_pad, pad_ids, real_tokens, right_pad
from xlm.scoring import corpus_perplexity, token_logprobs

CONFIG = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=211, dim=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def model():
    return seeded_model(CONFIG)


def one_line_input_error(call) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- An empty batch -----------------------------------------------------------------------------------------


EMPTY = torch.zeros(0, 5, dtype=torch.long)  # (0, T): no rows


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m(EMPTY, 0, causal=True),
        lambda m: m.encode(EMPTY, 0, causal=False),
        lambda m: generate(m, EMPTY, 0, max_new_tokens=3),
        lambda m: token_logprobs(m, EMPTY, 0),
    ],
    ids=["forward", "encode", "generate", "token_logprobs"],
)
def test_an_empty_batch_is_an_input_error(model, call):
    assert "non-empty (B, T)" in one_line_input_error(lambda: call(model))


def test_an_empty_corpus_is_an_input_error_not_nan(model):
    assert "no sentences to score" in one_line_input_error(lambda: corpus_perplexity(model, [], 0))


# --- Language ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "langs", [0.7, torch.tensor([0.7, 1.0]), torch.full((2, 3), 1.0)], ids=["float", "(B,)", "(B, T)"]
)
def test_float_language_ids_are_refused_not_truncated(model, langs):
    ids = random_ids(CONFIG.vocab_size, (2, 3))
    assert "integer language ids" in one_line_input_error(lambda: model(ids, langs, causal=True))
    assert "integer language ids" in one_line_input_error(lambda: generate(model, ids, langs, max_new_tokens=2))


@pytest.mark.parametrize(
    "shape",
    [(3,), (3, 3), (2, 2), (1, 2, 3)],
    ids=["(3,) for 2 rows of 3", "(3, T)", "(B, T-1)", "3-d"],
)
def test_language_ids_of_a_wrong_shape_are_refused(model, shape):
    """(3,) for 2 rows of 3 tokens used to pass as one id per position for every row: now an error."""
    ids = random_ids(CONFIG.vocab_size, (2, 3))
    langs = torch.zeros(shape, dtype=torch.long)
    message = one_line_input_error(lambda: model(ids, langs, causal=True))
    assert "langs must be one id, (B,) or (B, T) = (2, 3)" in message
    assert "langs must be one id" in one_line_input_error(lambda: generate(model, ids, langs, max_new_tokens=2))


def test_language_ids_accept_one_id_a_row_or_a_position():
    for langs, expected in [
        (1, [[1, 1, 1], [1, 1, 1]]),
        (torch.tensor([0, 1]), [[0, 0, 0], [1, 1, 1]]),
        (torch.tensor([[0], [1]]), [[0, 0, 0], [1, 1, 1]]),
        (torch.tensor([[0, 1, 1], [1, 0, 0]]), [[0, 1, 1], [1, 0, 0]]),
    ]:
        assert language_ids(CONFIG, langs, 2, 3, "cpu").tolist() == expected
    assert language_ids(dataclasses.replace(CONFIG, use_lang_emb=False), None, 2, 3, "cpu") is None


# --- Sampling at extreme temperatures ------------------------------------------------------------------------


def test_a_tiny_temperature_samples_the_argmax_instead_of_overflowing():
    """logits / 1e-40 overflow to inf, and softmax(inf - inf) is NaN; dividing logits minus their maximum is
    greedy in the limit, as it should be."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 10
    for temperature in (1e-40, 1e-300):
        drawn = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(1))
        assert torch.equal(drawn, logits.argmax(dim=-1))


def test_generate_with_a_tiny_temperature_gives_the_greedy_tokens(model):
    ids = random_ids(CONFIG.vocab_size, (2, 4))
    greedy = generate(model, ids, 0, max_new_tokens=6, stop_at_eos=False)
    tiny = generate(model, ids, 0, max_new_tokens=6, stop_at_eos=False, temperature=1e-40)
    assert torch.equal(tiny.tokens, greedy.tokens)


# --- Padding and masks --------------------------------------------------------------------------------------


def test_left_and_right_padding():
    ids, mask = left_pad([[1, 20, 21], [1, 22]])
    assert ids.tolist() == [[1, 20, 21], [2, 1, 22]] and mask.tolist() == [[True] * 3, [False, True, True]]
    ids, mask = right_pad([[1, 20, 21], [1, 22]])
    assert ids.tolist() == [[1, 20, 21], [1, 22, 2]] and mask.tolist() == [[True] * 3, [True, True, False]]
    assert "side must be" in one_line_input_error(lambda: pad_ids([[1]], side="middle"))
    assert "at least one token" in one_line_input_error(lambda: right_pad([]))


def test_the_attention_mask_defaults_to_the_non_pad_ids_and_must_match_their_shape():
    ids = torch.tensor([[2, 1, 20]])
    assert real_tokens(ids, None, 2).tolist() == [[False, True, True]]
    assert real_tokens(ids, torch.tensor([[1, 1, 1]]), 2).tolist() == [[True, True, True]]
    message = one_line_input_error(lambda: real_tokens(ids, torch.ones(1, 2), 2))
    assert "attention_mask (1, 2) does not match input_ids (1, 3)" in message


def test_a_batch_is_passed_by_name(model):
    ids, mask = right_pad([[1, 20, 21], [1, 22]])
    batch = Batch(ids, mask.long(), torch.tensor([[0] * 3, [1] * 3]))
    assert batch.lengths.tolist() == [3, 2] and batch.keys() == ["input_ids", "attention_mask", "langs"]
    with torch.no_grad():
        expected = model(ids, batch.langs, causal=True, attention_mask=mask)
        torch.testing.assert_close(model(**batch, causal=True), expected, rtol=0, atol=0)
