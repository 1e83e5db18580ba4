"""Our XLM equals transformers' XLMWithLMHeadModel, loaded from the files transformers itself writes.

Tolerance: 1e-5 absolute on fp32 logits and hidden states for the default SDPA attention (its blockwise
softmax rounds differently: ~1e-7 at these tiny sizes, ~3e-6 at full size); the reference attention, which
follows transformers' order of operations, must give identical bits.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FULL_SIZE, random_ids

from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.parity import load_transformers_model

TOL = 1e-5


def run_both(ours, theirs, input_ids, mask, langs, causal):
    theirs.transformer.causal = causal
    with torch.no_grad():
        ref = theirs(input_ids=input_ids, attention_mask=mask.long(), langs=langs, output_hidden_states=True)
        hidden = ours.encode(input_ids, langs, causal=causal, attention_mask=mask, all_layers=True)
        logits = ours.logits(hidden[-1])
    return hidden, logits, torch.stack(ref.hidden_states), ref.logits


def right_padded_batch(config, batch=3, seq=19, seed=0):
    input_ids = random_ids(config.vocab_size, (batch, seq), seed)
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[1, seq - 6 :] = False  # one row right-padded
    input_ids[~mask] = config.pad_id
    langs = None
    if config.has_lang_embeddings:
        langs = torch.randint(0, config.n_langs, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return input_ids, mask, langs


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_scaled_down_presets_match_transformers(tiny_checkpoint, preset, causal):
    path = tiny_checkpoint(preset)
    ours, theirs = load_pretrained(path), load_transformers_model(path)
    input_ids, mask, langs = right_padded_batch(ours.config)
    hidden, logits, ref_hidden, ref_logits = run_both(ours, theirs, input_ids, mask, langs, causal)
    assert hidden.shape == ref_hidden.shape == (ours.config.n_layers + 1, *input_ids.shape, ours.config.dim)
    torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=TOL)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=TOL)

    reference = load_pretrained(path, attention="reference")
    hidden, logits, ref_hidden, ref_logits = run_both(reference, theirs, input_ids, mask, langs, causal)
    assert torch.equal(hidden, ref_hidden) and torch.equal(logits, ref_logits)


def test_presets_keep_their_structure_when_scaled_down(tiny_checkpoint):
    """The scaled-down family covers what differs between checkpoints: language tables and head counts."""
    seen = set()
    for preset in ("xlm-mlm-en-2048", "xlm-clm-enfr-1024", "xlm-mlm-xnli15-1024", "xlm-mlm-100-1280"):
        model = load_pretrained(tiny_checkpoint(preset))
        table = model.lang_embeddings
        seen.add((model.config.n_langs, None if table is None else table.num_embeddings, model.config.n_heads))
    assert seen == {(1, None, 16), (2, 2, 8), (15, 15, 8), (100, None, 16)}


@pytest.mark.slow
def test_full_size_enfr_matches_transformers(full_size_checkpoint):
    ours, theirs = load_pretrained(full_size_checkpoint), load_transformers_model(full_size_checkpoint)
    reference = load_pretrained(full_size_checkpoint, attention="reference")
    cfg = ours.config
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim) == (64139, 1024, 6, 8, 4096)
    assert sum(p.numel() for p in ours.parameters()) == 141_848_203
    input_ids, mask, langs = right_padded_batch(cfg, batch=2, seq=48)
    for causal in (False, True):
        hidden, logits, ref_hidden, ref_logits = run_both(ours, theirs, input_ids, mask, langs, causal)
        torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=TOL)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=TOL)
        _, logits, _, ref_logits = run_both(reference, theirs, input_ids, mask, langs, causal)
        assert torch.equal(logits, ref_logits), f"reference attention not bit-exact at full size, causal={causal}"


def test_objective_of_a_preset_directory_is_recorded(tiny_checkpoint):
    assert load_pretrained(tiny_checkpoint("xlm-clm-enfr-1024")).config.objective == "clm"
    assert load_pretrained(tiny_checkpoint("xlm-mlm-enfr-1024")).config.objective == "mlm"
    assert FULL_SIZE in PRESETS
