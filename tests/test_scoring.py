"""Scoring: causal log-probabilities against transformers, perplexity by hand, fill-mask, ranking fillers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import random_ids

from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.inputs import right_pad
from xlm.model import XLM
from xlm.parity import load_transformers_model
from xlm.scoring import (
    corpus_perplexity,
    fill_mask,
    length_batches,
    rank_fillers,
    sentence_logprob,
    token_logprobs,
)

CONFIG = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=211, dim=32, n_layers=2, n_heads=4)
EOS, PAD, MASK = CONFIG.eos_id, CONFIG.pad_id, CONFIG.mask_id
TOL = 1e-5


@pytest.fixture
def tiny() -> XLM:
    torch.manual_seed(0)
    return XLM(CONFIG).eval()


def sentences(vocab_size: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Framed sentences `</s> w1 .. wn </s>` with random non-special words."""
    return [[EOS, *random_ids(vocab_size, (1, n), seed=seed + i)[0].tolist(), EOS] for i, n in enumerate(lengths)]


# --- Log-probabilities --------------------------------------------------------------------------------------


def test_token_logprobs_equal_transformers_causal_log_softmax_shifted_by_one(tiny_checkpoint):
    path = tiny_checkpoint("xlm-clm-enfr-1024")
    ours, theirs = load_pretrained(path), load_transformers_model(path)
    theirs.transformer.causal = True
    input_ids, mask = right_pad(sentences(ours.config.vocab_size, [12, 5, 9]), PAD)  # right: defined for both
    langs = torch.tensor([[0], [1], [0]]).expand_as(input_ids)
    with torch.no_grad():
        ref_logits = theirs(input_ids=input_ids, attention_mask=mask.long(), langs=langs).logits  # (B, T, V)
    ref = ref_logits[:, :-1].log_softmax(dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    ours_lp = token_logprobs(ours, input_ids, langs, attention_mask=mask)
    scored = mask[:, 1:]  # right padding: x_t real implies x_{t-1} real
    torch.testing.assert_close(ours_lp[scored], ref[scored], rtol=0, atol=TOL)
    assert ours_lp[~scored].abs().max() == 0
    torch.testing.assert_close(sentence_logprob(ours, input_ids, langs, attention_mask=mask), (ref * scored).sum(1))


def test_left_and_right_padding_give_the_same_scores(tiny):
    rows = sentences(CONFIG.vocab_size, [10, 3])
    right_ids, right_mask = right_pad(rows, PAD)
    left_ids = torch.stack([torch.cat([ids[~m], ids[m]]) for ids, m in zip(right_ids, right_mask, strict=True)])
    alone = [sentence_logprob(tiny, torch.tensor([row]), 1) for row in rows]
    torch.testing.assert_close(sentence_logprob(tiny, right_ids, 1), torch.cat(alone), rtol=0, atol=TOL)
    torch.testing.assert_close(sentence_logprob(tiny, left_ids, 1), torch.cat(alone), rtol=0, atol=TOL)


def test_the_lm_head_is_chunked_without_changing_the_result(tiny, monkeypatch):
    input_ids, mask = right_pad(sentences(CONFIG.vocab_size, [20, 7]), PAD)
    whole = token_logprobs(tiny, input_ids, 0, attention_mask=mask)
    monkeypatch.setattr("xlm.scoring.LOGITS_CHUNK", 3)
    torch.testing.assert_close(token_logprobs(tiny, input_ids, 0, attention_mask=mask), whole, rtol=0, atol=1e-6)


# --- Perplexity ---------------------------------------------------------------------------------------------


def test_corpus_perplexity_equals_the_token_weighted_mean_computed_by_hand(tiny):
    corpus = sentences(CONFIG.vocab_size, [7, 2, 15, 7, 4, 11, 1], seed=3)
    nll, count, per_sentence = 0.0, 0, []
    with torch.no_grad():
        for ids in corpus:  # one sentence at a time, no padding, the plain definition
            x = torch.tensor([ids])
            logprobs = tiny(x, 1, causal=True)[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None]).squeeze(-1)
            nll -= logprobs.double().sum().item()
            count += len(ids) - 1
            per_sentence.append(logprobs.double().sum().item())
    result = corpus_perplexity(tiny, corpus, 1, max_batch_tokens=30)  # several batches of mixed lengths
    assert result.tokens == count == sum(len(ids) - 1 for ids in corpus)
    assert result.sentences == len(corpus)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert result.sentence_logprobs == pytest.approx(per_sentence, rel=1e-5)


def test_length_batches_cover_every_sentence_once_within_the_budget():
    corpus = [[1] * n for n in (5, 1, 9, 9, 3, 7, 2, 8)]
    batches = length_batches(corpus, max_batch_tokens=18)
    assert sorted(i for batch in batches for i in batch) == list(range(len(corpus)))
    for batch in batches:
        widths = [len(corpus[i]) for i in batch]
        assert widths == sorted(widths, reverse=True) and len(batch) * widths[0] <= 18
    assert length_batches([[1] * 50], max_batch_tokens=10) == [[0]]  # a long sentence still gets a batch


def test_corpus_perplexity_rejects_sentences_longer_than_the_positions(tiny):
    with pytest.raises(InputError, match="sentence 2 has 513 tokens; XLM has 512 positions"):
        corpus_perplexity(tiny, [[1, 20, 1], [1] * 513], 0)


def test_causal_scoring_refuses_a_masked_lm_unless_allowed():
    model = XLM(dataclasses.replace(CONFIG, objective="mlm")).eval()
    ids = torch.tensor(sentences(CONFIG.vocab_size, [4]))
    with pytest.raises(InputError, match="masked LM"):
        token_logprobs(model, ids, 0)
    assert token_logprobs(model, ids, 0, allow_mlm=True).shape == (1, 5)


# --- Fill-mask (MLM) ----------------------------------------------------------------------------------------


def test_fill_mask_top_k_equals_transformers_logits_at_the_masks(tiny_checkpoint):
    path = tiny_checkpoint("xlm-mlm-enfr-1024")
    ours, theirs = load_pretrained(path), load_transformers_model(path)
    theirs.transformer.causal = False
    [ids] = sentences(ours.config.vocab_size, [10])
    ids[3] = ids[7] = MASK
    input_ids = torch.tensor([ids])
    fills = fill_mask(ours, input_ids, 1, top_k=7)
    with torch.no_grad():
        ref = theirs(input_ids=input_ids, langs=torch.ones_like(input_ids)).logits[0]  # (T, V)
    assert [(f.row, f.position) for f in fills] == [(0, 3), (0, 7)]
    for fill in fills:
        values, indices = ref[fill.position].softmax(-1).topk(7)
        assert fill.token_ids == indices.tolist()
        assert fill.probs == pytest.approx(values.tolist(), abs=1e-6)


def test_fill_mask_of_a_padded_batch_equals_each_row_alone(tiny_checkpoint):
    model = load_pretrained(tiny_checkpoint("xlm-mlm-enfr-1024"))
    rows = sentences(model.config.vocab_size, [9, 4])
    rows[0][2], rows[1][4] = MASK, MASK
    input_ids, mask = right_pad(rows, PAD)
    batched = fill_mask(model, input_ids, torch.tensor([0, 1]), attention_mask=mask)
    alone = [fill_mask(model, torch.tensor([rows[0]]), 0)[0], fill_mask(model, torch.tensor([rows[1]]), 1)[0]]
    assert [(f.row, f.position, f.token_ids) for f in batched] == [
        (0, 2, alone[0].token_ids),
        (1, 4, alone[1].token_ids),
    ]
    assert batched[1].probs == pytest.approx(alone[1].probs, abs=1e-6)


def test_fill_mask_needs_a_masked_lm_and_a_mask(tiny):
    with pytest.raises(InputError, match="causal LM: it never sees the right side"):
        fill_mask(tiny, torch.tensor([[1, 5, 1]]), 0)
    mlm = XLM(dataclasses.replace(CONFIG, objective="mlm")).eval()
    with pytest.raises(InputError, match="no mask token <special1>"):
        fill_mask(mlm, torch.tensor([[1, 20, 1]]), 0)
    with pytest.raises(InputError, match="objective='clm' or 'mlm'"):
        fill_mask(XLM(dataclasses.replace(CONFIG, objective=None)), torch.tensor([[1, 5, 1]]), 0)


# --- Ranking fillers (CLM) ----------------------------------------------------------------------------------


def test_rank_fillers_scores_each_filled_sentence(tiny):
    template = [EOS, 30, 31, MASK, 32, EOS]
    candidates = [[40], [41, 42], [43, 44, 45]]
    scores = rank_fillers(tiny, template, candidates, 0)
    expected = [sentence_logprob(tiny, torch.tensor([[EOS, 30, 31, *c, 32, EOS]]), 0).item() for c in candidates]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("template", "candidates", "message"),
    [
        ([EOS, 30, EOS], [[40]], "exactly one mask token <special1>, found 0"),
        ([EOS, MASK, MASK, EOS], [[40]], "found 2"),
        ([EOS, MASK, EOS], [], "at least one candidate"),
        ([EOS, MASK, EOS], [[40], []], "at least one candidate"),
        ([EOS, MASK, EOS], [[40] * 511], "a filled sentence has 513 tokens; XLM has 512 positions"),
    ],
)
def test_rank_fillers_rejects_bad_input(tiny, template, candidates, message):
    with pytest.raises(InputError, match=message):
        rank_fillers(tiny, template, candidates, 0)
