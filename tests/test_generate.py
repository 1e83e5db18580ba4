"""Generation: the cached loop equals full recomputation and transformers' forward; sampling; stopping; refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_ids

from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.generation import generate, sample_next, top_k_filter, top_p_filter
from xlm.inputs import left_pad
from xlm.model import XLM
from xlm.parity import load_transformers_model

CONFIG = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=211, dim=32, n_layers=2, n_heads=4)
EOS = CONFIG.eos_id
TOL = 1e-5


@pytest.fixture
def tiny() -> XLM:
    torch.manual_seed(0)
    return XLM(CONFIG).eval()


@pytest.fixture(scope="module")
def full_size(full_size_checkpoint) -> XLM:
    return load_pretrained(full_size_checkpoint)


def prompts(vocab_size: int, lengths: list[int]) -> list[list[int]]:
    """Prompts in XLM's original framing: `</s>` then random non-special ids, without the final `</s>`."""
    return [[EOS, *random_ids(vocab_size, (1, n - 1), seed=i)[0].tolist()] for i, n in enumerate(lengths)]


@torch.no_grad()
def full_recomputation_greedy(model: XLM, input_ids, attention_mask, langs, steps: int):
    """The reference: a full causal forward over the whole growing sequence at every step; argmax at the end."""
    tokens, logits = [], []
    for _ in range(steps):
        h = model.encode(input_ids, langs, causal=True, attention_mask=attention_mask)  # (B, T, C)
        step_logits = model.logits(h[:, -1])  # (B, V): the head where the next token is predicted
        token = step_logits.argmax(dim=-1)
        tokens.append(token)
        logits.append(step_logits)
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


# --- The cache: same tokens and logits as recomputing everything -------------------------------------------


@pytest.mark.slow
def test_cached_greedy_equals_full_recomputation_at_full_size(full_size):
    """64 greedy steps on the exact xlm-clm-enfr-1024 shapes: same tokens, logits within 1e-5 at every step."""
    input_ids, attention_mask = left_pad(prompts(full_size.config.vocab_size, [9]))
    out = generate(full_size, input_ids, 0, max_new_tokens=64, stop_at_eos=False, output_logits=True)
    ref_tokens, ref_logits = full_recomputation_greedy(full_size, input_ids, attention_mask, 0, 64)
    assert out.tokens.shape == (1, 64) and out.lengths.tolist() == [64]
    assert torch.equal(out.tokens, ref_tokens)
    torch.testing.assert_close(out.logits, ref_logits, rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_cached_decoding_of_a_left_padded_batch_equals_a_full_forward_at_full_size(full_size, temperature):
    """Rows of 10 and 4 prompt tokens (the short one left-padded, another language), 64 steps.

    One causal forward over prompt + generated tokens gives at every position exactly what recomputing the
    prefix at that step gives (causal attention does not see the future; tests/test_model.py), for all 64
    steps at once. Sampling varies the fed tokens (greedy random weights repeat one token), so a cache that
    missed a generated token could not go unnoticed.
    """
    input_ids, attention_mask = left_pad(prompts(full_size.config.vocab_size, [10, 4]))
    langs = torch.tensor([0, 1])
    out = generate(
        full_size, input_ids, langs, attention_mask=attention_mask, max_new_tokens=64, temperature=temperature,
        generator=torch.Generator().manual_seed(0), stop_at_eos=False, output_logits=True,
    )  # fmt: skip
    whole = torch.cat([input_ids, out.tokens], dim=1)
    whole_mask = torch.cat([attention_mask, torch.ones_like(out.tokens, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        ref = full_size(whole, langs, causal=True, attention_mask=whole_mask)  # (B, T + 64, V)
    ref = ref[:, input_ids.size(1) - 1 : -1]  # the logits that predicted each generated token
    assert out.tokens.shape == (2, 64) and out.lengths.tolist() == [64, 64]
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=TOL)
    if temperature == 0.0:
        assert torch.equal(out.tokens, ref.argmax(dim=-1))
    else:
        assert min(len(set(row)) for row in out.tokens.tolist()) > 32


def test_cached_sampling_equals_full_recomputation_with_the_same_draws(tiny):
    input_ids, attention_mask = left_pad(prompts(CONFIG.vocab_size, [7, 3, 5]))
    out = generate(
        tiny, input_ids, 1, attention_mask=attention_mask, max_new_tokens=40, temperature=1.0,
        generator=torch.Generator().manual_seed(5), stop_at_eos=False,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(5)
    ids, mask = input_ids, attention_mask
    with torch.no_grad():
        for step in range(40):
            logits = tiny(ids, 1, causal=True, attention_mask=mask)[:, -1]
            token = sample_next(logits, temperature=1.0, generator=generator)
            assert torch.equal(token, out.tokens[:, step]), f"step {step}"
            ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert len(set(out.tokens.flatten().tolist())) > 20


# --- Against transformers: a greedy loop over its forward (never its generate) -----------------------------


@torch.no_grad()
def transformers_greedy(theirs, ids: list[int], lang: int, steps: int):
    """transformers' XLMWithLMHeadModel with causal attention, full forward on the growing sequence, argmax."""
    theirs.transformer.causal = True  # the hub config says false; CLM training used causal attention
    seq = torch.tensor([ids])
    tokens, logits = [], []
    for _ in range(steps):
        last = theirs(input_ids=seq, attention_mask=torch.ones_like(seq), langs=torch.full_like(seq, lang)).logits[
            0, -1
        ]
        tokens.append(int(last.argmax()))
        logits.append(last)
        seq = torch.cat([seq, torch.tensor([[tokens[-1]]])], dim=1)
    return tokens, torch.stack(logits)


def test_greedy_equals_a_transformers_forward_loop_alone_and_in_a_batch(tiny_checkpoint):
    """32 greedy steps against transformers' forward on the growing sequence (never its `generate`).

    transformers does not mask left padding under causal attention, so a batch is compared row by row. The
    full-size version follows.
    """
    path = tiny_checkpoint("xlm-clm-enfr-1024")
    ours, theirs = load_pretrained(path), load_transformers_model(path)
    rows, langs = prompts(ours.config.vocab_size, [9, 4]), [0, 1]
    references = [transformers_greedy(theirs, ids, lang, steps=32) for ids, lang in zip(rows, langs, strict=True)]

    alone = generate(ours, torch.tensor([rows[0]]), langs[0], max_new_tokens=32, stop_at_eos=False, output_logits=True)
    assert alone.rows() == [references[0][0]]
    torch.testing.assert_close(alone.logits[0], references[0][1], rtol=0, atol=TOL)

    input_ids, attention_mask = left_pad(rows)
    batch = generate(
        ours, input_ids, torch.tensor(langs), attention_mask=attention_mask, max_new_tokens=32, stop_at_eos=False,
        output_logits=True,
    )  # fmt: skip
    for row, (ref_tokens, ref_logits) in enumerate(references):
        assert batch.rows()[row] == ref_tokens
        torch.testing.assert_close(batch.logits[row], ref_logits, rtol=0, atol=TOL)


@pytest.mark.slow
def test_full_size_cached_generation_equals_a_transformers_forward_loop(full_size, full_size_checkpoint):
    """The real shapes: 16 cached greedy steps of a left-padded batch of two, each row against transformers'
    causal forward over its growing sequence (row by row: transformers does not mask left padding)."""
    theirs = load_transformers_model(full_size_checkpoint)
    rows, langs = prompts(full_size.config.vocab_size, [9, 4]), [0, 1]
    input_ids, attention_mask = left_pad(rows)
    batch = generate(
        full_size, input_ids, torch.tensor(langs), attention_mask=attention_mask, max_new_tokens=16,
        stop_at_eos=False, output_logits=True,
    )  # fmt: skip
    for row, (ids, lang) in enumerate(zip(rows, langs, strict=True)):
        with torch.no_grad():
            ref_tokens, ref_logits = transformers_greedy(theirs, ids, lang, steps=16)
        assert batch.rows()[row] == ref_tokens
        torch.testing.assert_close(batch.logits[row], ref_logits, rtol=0, atol=TOL)


# --- Languages per position ---------------------------------------------------------------------------------


def test_continue_lang_gives_generated_positions_their_own_language(tiny):
    """An English prompt continued in French: prompt positions en (0), generated positions fr (1)."""
    input_ids = torch.tensor(prompts(CONFIG.vocab_size, [6]))
    kwargs = dict(max_new_tokens=8, temperature=1.0, stop_at_eos=False, output_logits=True)
    out = generate(tiny, input_ids, 0, continue_lang=1, generator=torch.Generator().manual_seed(0), **kwargs)
    whole = torch.cat([input_ids, out.tokens], dim=1)
    langs = torch.tensor([[0] * 6 + [1] * 8])
    with torch.no_grad():
        ref = tiny(whole, langs, causal=True)[:, 5:-1]
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=TOL)
    english = generate(tiny, input_ids, 0, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(out.logits[:, 0], english.logits[:, 0])  # the first prediction sees only the prompt
    assert not torch.allclose(out.logits[:, 1:], english.logits[:, 1:])


def test_models_without_language_embeddings_generate_without_langs():
    config = dataclasses.replace(PRESETS["xlm-mlm-17-1280"], vocab_size=211, dim=32, n_layers=1, n_heads=4)
    model = XLM(config).eval()
    out = generate(model, torch.tensor(prompts(211, [5])), None, max_new_tokens=3, allow_mlm=True)
    assert out.tokens.shape == (1, 3)


# --- Sampling -----------------------------------------------------------------------------------------------


def test_sampling_with_a_seed_is_reproducible(tiny):
    input_ids, attention_mask = left_pad(prompts(CONFIG.vocab_size, [5, 8]))

    def sample(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate(
            tiny, input_ids, 0, attention_mask=attention_mask, max_new_tokens=20, temperature=0.9, top_k=50,
            top_p=0.95, generator=generator, stop_at_eos=False,
        ).tokens  # fmt: skip

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_top_k_1_equals_greedy(tiny):
    input_ids, attention_mask = left_pad(prompts(CONFIG.vocab_size, [5, 8]))
    greedy = generate(tiny, input_ids, 1, attention_mask=attention_mask, max_new_tokens=16)
    top1 = generate(
        tiny, input_ids, 1, attention_mask=attention_mask, max_new_tokens=16, temperature=2.0, top_k=1,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(greedy.tokens, top1.tokens)


PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # most probable first: 1, 3, 2, 0


@pytest.mark.parametrize(("p", "kept"), [(0.45, {1}), (0.7, {1, 3}), (0.9, {1, 2, 3}), (0.97, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_most_probable_set_that_reaches_p(p, kept):
    filtered = top_p_filter(PROBS.log()[None], p)[0]
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == kept
    torch.testing.assert_close(filtered[list(kept)], PROBS.log()[list(kept)])  # kept logits are untouched


def test_top_p_samples_from_the_renormalised_nucleus():
    logits = PROBS.log().expand(20000, 4)
    draws = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]), rtol=0, atol=0.015)


def test_temperature_applies_before_top_p():
    """At temperature 0.25 the probabilities become p^4 / Σ p^4 (top token 0.875): a 0.7 nucleus is one token."""
    logits = PROBS.log().expand(2000, 4)
    draws = sample_next(logits, temperature=0.25, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1}


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert torch.isfinite(top_k_filter(logits, 2)).nonzero()[:, 1].tolist() == [1, 3]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_greedy_ignores_filters_and_takes_the_first_maximum():
    logits = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    assert sample_next(logits).tolist() == [1]
    assert sample_next(logits, top_k=3, top_p=0.5).tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(temperature=float("inf")), "temperature must be >= 0 and finite"),
        (dict(temperature=1.0, top_k=0), "top_k must be a positive integer"),
        (dict(temperature=1.0, top_p=0.0), "top_p must be in (0, 1]"),
        (dict(temperature=1.0, top_p=1.5), "top_p must be in (0, 1]"),
    ],
)
def test_bad_sampling_settings_raise(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        sample_next(torch.zeros(1, 4), **kwargs)


# --- Stopping at </s> ---------------------------------------------------------------------------------------


def force_eos(model: XLM, monkeypatch, at_call: int, rows: list[int]) -> None:
    """Make `model.logits` put </s> first for `rows` on its `at_call`-th call (0 = the prefill's)."""
    original, calls = model.logits, []

    def logits(h):
        out = original(h)
        if len(calls) == at_call:
            out[rows, EOS] = 1e4
        calls.append(None)
        return out

    monkeypatch.setattr(model, "logits", logits)


def test_each_row_stops_at_its_own_eos_without_disturbing_the_others(tiny, monkeypatch):
    input_ids, attention_mask = left_pad(prompts(CONFIG.vocab_size, [6, 4]))
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=10, temperature=1.0, output_logits=True)
    free = generate(tiny, input_ids, 0, generator=torch.Generator().manual_seed(0), stop_at_eos=False, **kwargs)
    force_eos(tiny, monkeypatch, at_call=3, rows=[0])
    out = generate(tiny, input_ids, 0, generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.lengths.tolist() == [4, 10]
    assert out.rows()[0] == [*free.tokens[0, :3].tolist(), EOS]
    assert out.tokens[0, 4:].tolist() == [CONFIG.pad_id] * 6
    assert torch.equal(out.tokens[1], free.tokens[1])  # the finished row is fed masked padding: no effect
    torch.testing.assert_close(out.logits[1], free.logits[1], rtol=0, atol=TOL)


def test_generation_ends_when_every_row_has_stopped(tiny, monkeypatch):
    input_ids, attention_mask = left_pad(prompts(CONFIG.vocab_size, [6, 4]))
    force_eos(tiny, monkeypatch, at_call=2, rows=[0, 1])
    out = generate(tiny, input_ids, 0, attention_mask=attention_mask, max_new_tokens=10)
    assert out.tokens.shape == (2, 3) and out.lengths.tolist() == [3, 3]
    assert out.tokens[:, -1].tolist() == [EOS, EOS]


# --- Refusals and bad input ---------------------------------------------------------------------------------


def test_a_masked_lm_generates_only_when_explicitly_allowed():
    model = XLM(dataclasses.replace(CONFIG, objective="mlm")).eval()
    ids = torch.tensor(prompts(CONFIG.vocab_size, [4]))
    with pytest.raises(InputError, match="masked LM: it was trained to fill masks"):
        generate(model, ids, 0, max_new_tokens=2)
    assert generate(model, ids, 0, max_new_tokens=2, allow_mlm=True).tokens.shape == (1, 2)


def test_an_unknown_objective_must_be_named():
    model = XLM(dataclasses.replace(CONFIG, objective=None)).eval()
    with pytest.raises(InputError, match=r"objective='clm' or 'mlm' \(command line: --objective clm\|mlm\)"):
        generate(model, torch.tensor([[1, 20]]), 0, max_new_tokens=2, allow_mlm=True)


@pytest.mark.parametrize(
    ("input_ids", "kwargs", "message"),
    [
        (torch.tensor([[1, 20, 2]]), {}, "must be left-padded"),
        (torch.tensor([[1, 20], [2, 2]]), {}, "prompt 1 is empty"),
        (torch.full((1, 500), 20), dict(max_new_tokens=13), "needs 513 positions; XLM has 512"),
        (torch.tensor([[1, 20]]), dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (torch.tensor([1, 20]), {}, "non-empty (B, T) integer tensor"),
        (torch.tensor([[1, 20]]), dict(continue_lang=2), "continue_lang must be in 0..1"),
        (torch.tensor([[1, 20]]), dict(continue_lang=torch.tensor([0, 1])), "continue_lang must be one id or (B,)"),
    ],
)
def test_bad_prompts_raise_one_clear_error(tiny, input_ids, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(InputError) as err:
        generate(tiny, input_ids, 0, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_left_pad_and_rows():
    input_ids, mask = left_pad([[1, 20, 21], [1, 22]])
    assert input_ids.tolist() == [[1, 20, 21], [2, 1, 22]] and mask.tolist() == [[True] * 3, [False, True, True]]
    with pytest.raises(InputError):
        left_pad([[1], []])
