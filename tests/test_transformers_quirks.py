"""transformers' XLM behaviours that this project deliberately does not copy (docs/parity.md).

Each test demonstrates one quirk of transformers 5.x on a seeded random checkpoint and, where it applies,
that xlm behaves as the original code does. If a transformers release fixes a quirk, its test fails: then
update docs/parity.md rather than the test.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids

from xlm.checkpoint import load_pretrained
from xlm.parity import load_transformers_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def pair(tiny_checkpoint):
    path = tiny_checkpoint("xlm-clm-enfr-1024")
    return load_pretrained(path), load_transformers_model(path)


def test_hub_config_runs_the_clm_bidirectionally(pair):
    """The hub config of xlm-clm-enfr-1024 says causal: false, so the past sees the future."""
    _, theirs = pair
    assert theirs.config.causal is False
    ids = random_ids(512, (1, 8))
    changed = ids.clone()
    changed[0, -1] = 100 if ids[0, -1] != 100 else 101
    with torch.no_grad():
        a, b = theirs(ids, langs=torch.zeros_like(ids)).logits, theirs(changed, langs=torch.zeros_like(ids)).logits
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first position depends on the last token


def test_padding_is_not_masked_under_causal_attention(pair):
    """Left padding changes transformers' causal logits even with correct position ids and attention_mask."""
    ours, theirs = pair
    theirs.transformer.causal = True
    ids = random_ids(512, (1, 8))
    padded = torch.cat([torch.full((1, 3), 2), ids], dim=1)
    mask = padded.ne(2)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = theirs(ids, langs=torch.zeros_like(ids)).logits[0]
        theirs_padded = theirs(
            padded, attention_mask=mask.long(), position_ids=positions, langs=torch.zeros_like(padded)
        ).logits[0, 3:]
        ours_padded = ours(padded, 0, causal=True)[0, 3:]
    assert (theirs_padded - alone).abs().max() > 1e-2
    torch.testing.assert_close(ours_padded, alone, rtol=0, atol=1e-5)


def test_generate_predicts_after_an_appended_dummy_token(pair):
    """generate() appends config.mask_token_id (0 = <s>) and reads the logits of that slot."""
    _, theirs = pair
    theirs.transformer.causal = True
    prompt = random_ids(512, (1, 6))
    langs = torch.zeros_like(prompt)
    with torch.no_grad():
        step = theirs.generate(prompt, max_new_tokens=1, do_sample=False, use_cache=False)[0, -1].item()
        after_dummy = theirs(torch.cat([prompt, torch.zeros(1, 1, dtype=torch.long)], 1), langs=torch.cat(
            [langs, langs[:, :1]], 1)).logits[0, -1].argmax().item()  # fmt: skip
        right = theirs(prompt, langs=langs).logits[0, -1].argmax().item()
    assert theirs.config.mask_token_id == 0 and step == after_dummy
    assert step != right  # with these weights the dummy slot predicts another token than the prompt's end


def test_generate_with_its_cache_never_sees_the_generated_tokens(pair):
    """With use_cache=True (the default) every step's cache holds the dummy token, not the generated one."""
    _, theirs = pair
    theirs.transformer.causal = True
    prompt = random_ids(512, (1, 6))
    with torch.no_grad():
        out = theirs.generate(
            prompt, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        dummies = torch.cat([prompt, torch.zeros(1, 4, dtype=torch.long)], 1)  # prompt + 4 dummy <s>
        stale = theirs(dummies, langs=torch.zeros_like(dummies)).logits[0, -1]
    torch.testing.assert_close(out.logits[-1][0], stale, rtol=0, atol=1e-5)


def test_token_type_ids_are_looked_up_in_the_word_embeddings(pair):
    """transformers 4.x tokenizers returned token_type_ids (zeros): model(**enc) then added E[<s>] everywhere."""
    _, theirs = pair
    ids = random_ids(512, (1, 5))
    langs = torch.zeros_like(ids)
    with torch.no_grad():
        plain = theirs(ids, langs=langs).logits
        with_types = theirs(ids, langs=langs, token_type_ids=torch.zeros_like(ids)).logits
    assert (plain - with_types).abs().max() > 1e-2


def test_labels_are_not_shifted(pair):
    """The docstring says labels are shifted inside the model; the loss is plain unshifted cross-entropy."""
    _, theirs = pair
    ids = random_ids(512, (1, 7))
    with torch.no_grad():
        out = theirs(ids, langs=torch.zeros_like(ids), labels=ids)
    unshifted = torch.nn.functional.cross_entropy(out.logits[0], ids[0])
    shifted = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, unshifted)
    assert not torch.allclose(out.loss, shifted)
