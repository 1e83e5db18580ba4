"""bf16 and fp16: weights loaded in the low precision only, the numerically delicate steps done in fp32, and the
logits of fp32 kept within the low precision's rounding (bitwise equality is not to be had with 8 or 11
significant bits; the bound is derived from the dtype and the logits' scale: xlm.parity.rounding_bound)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, scaled_down

from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.model import attention_sdpa
from xlm.parity import rounding_bound
from xlm.synthetic import save_synthetic_checkpoint

LOW = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return save_synthetic_checkpoint(scaled_down(PRESETS["xlm-clm-enfr-1024"]), root / "xlm-clm-enfr-1024")


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_low_precision_loading_keeps_no_fp32_tensor(checkpoint, dtype):
    fp32 = load_pretrained(checkpoint)
    low = load_pretrained(checkpoint, dtype=dtype)
    tensors = [*low.parameters(), *low.buffers()]
    assert {t.dtype for t in tensors} == {dtype}
    assert sum(t.nbytes for t in tensors) * 2 == sum(t.nbytes for t in fp32.parameters())
    assert low.new_cache(1, 4).k[0].dtype == dtype


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_low_precision_logits_stay_within_its_rounding_of_fp32(checkpoint, dtype, causal):
    """8 x 64 random ids: logits within 4 roundings of the largest one (measured 1.3-1.5 here), and a different
    argmax only where fp32's top two logits are within that distance of each other."""
    ids = random_ids(512, (8, 64))
    with torch.no_grad():
        exact = load_pretrained(checkpoint)(ids, 0, causal=causal)
        low = load_pretrained(checkpoint, dtype=dtype)(ids, 0, causal=causal).float()
    bound = rounding_bound(dtype, exact)
    assert bound < (0.12 if dtype == torch.bfloat16 else 0.015)  # logits up to ~7: 4 x 7 x 2^-8 or 2^-11
    assert (exact - low).abs().max() <= bound
    top2 = exact.topk(2, dim=-1).values  # (B, T, 2)
    flipped = exact.argmax(-1) != low.argmax(-1)
    assert (top2[..., 0] - top2[..., 1])[flipped].le(2 * bound).all()


def test_bf16_attention_accumulates_in_fp32():
    """The default attention in bf16 (PyTorch's CPU SDPA kernel) is the fp32 computation on the same bf16
    inputs, rounded: scores, softmax and weighted sum are accumulated in fp32, only the output is bf16."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 64, 128, generator=generator).bfloat16() for _ in range(3))
    allowed = torch.ones(2, 1, 64, 64, dtype=torch.bool).tril()
    low = attention_sdpa(q, k, v, allowed)
    expected = attention_sdpa(q.float(), k.float(), v.float(), allowed)
    one_rounding = (expected.bfloat16().float() - expected).abs().max()
    assert low.dtype == torch.bfloat16 and (low.float() - expected).abs().max() <= 2 * one_rounding


def test_bf16_softmax_is_computed_in_fp32():
    """`attention_reference` casts its scores to fp32 for the softmax; PyTorch's bf16 softmax does the same."""
    scores = (torch.randn(4, 512, generator=torch.Generator().manual_seed(0)) * 30).bfloat16()
    assert torch.equal(torch.softmax(scores, dim=-1), torch.softmax(scores.float(), dim=-1).bfloat16())


def test_bf16_layer_norm_is_computed_in_fp32():
    """PyTorch's CPU LayerNorm reduces bf16 input in fp32: the result is the fp32 one, rounded once (~all equal)."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 1024, generator=generator) * 3 + 5).bfloat16()  # a large mean: the hard case
    weight, bias = torch.randn(1024, generator=generator).bfloat16(), torch.randn(1024, generator=generator).bfloat16()
    low = F.layer_norm(x, (1024,), weight, bias, eps=1e-12)
    rounded = F.layer_norm(x.float(), (1024,), weight.float(), bias.float(), eps=1e-12).bfloat16()
    assert (low == rounded).float().mean() > 0.999
    assert (low.float() - rounded.float()).abs().max() <= 2**-6  # at most one bf16 ulp of values below 4
