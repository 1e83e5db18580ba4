"""On a CUDA device: parity, lower precision, padding and the KV cache with CUDA's SDPA kernels.

Skipped without CUDA (the project builds and passes its tests on CPU alone). Run on a GPU machine with
`python -m pytest tests/test_gpu.py -v`; docs/parity.md records the last run.

Tolerances: fp32 logits within 1e-4 of transformers (cuBLAS and the fused attention kernels reduce in
other orders than the CPU; TF32 is switched off so fp32 means fp32); bf16/fp16 are judged on top-1 agreement
with fp32 transformers (>= 99%), as the parity script does.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FULL_SIZE, random_ids

from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.generation import generate
from xlm.inputs import left_pad
from xlm.parity import compare, load_transformers_model, make_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = "cuda"


@pytest.fixture(scope="module", autouse=True)
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def theirs(full_size_checkpoint):
    return load_transformers_model(full_size_checkpoint).to(CUDA)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_fp32_logits_match_transformers_on_cuda(full_size_checkpoint, theirs, causal):
    ours = load_pretrained(full_size_checkpoint, device=CUDA)
    batch = make_batch(ours, 4, 128, seed=0, device=CUDA)
    report = compare(ours, theirs, batch, causal, accept=lambda max_abs, top1: max_abs <= 1e-4)
    print(f"cuda fp32 causal={causal}: max |Δ| {report.max_abs_logits:.2e}, per layer {report.per_layer}")
    assert report.ok and report.top1_agreement == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lower_precision_agrees_on_the_top_token(full_size_checkpoint, theirs, dtype):
    ours = load_pretrained(full_size_checkpoint, dtype=dtype, device=CUDA)
    assert all(p.dtype == dtype for p in ours.parameters())
    batch = make_batch(ours, 8, 128, seed=1, device=CUDA)
    for causal in (False, True):
        report = compare(ours, theirs, batch, causal, accept=lambda max_abs, top1: top1 >= 0.99)
        print(f"cuda {dtype} causal={causal}: top-1 {report.top1_agreement:.4f}, max |Δ| {report.max_abs_logits:.3g}")
        assert report.ok


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_left_padding_is_masked_by_cuda_sdpa(tiny_checkpoint, dtype):
    """CUDA's fused kernels get the same boolean mask: padded rows stay finite and change no real token."""
    model = load_pretrained(tiny_checkpoint(FULL_SIZE), dtype=dtype, device=CUDA)
    ids = random_ids(512, (1, 9)).to(CUDA)
    padded = torch.cat([torch.full((1, 4), 2, device=CUDA), ids], dim=1)
    with torch.no_grad():
        alone = model(ids, 1, causal=True).float()
        out = model(padded, 1, causal=True).float()
    assert torch.isfinite(out).all()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out[0, 4:], alone[0], rtol=0, atol=tol)


def test_sdpa_agrees_with_the_reference_on_cuda(full_size_checkpoint):
    model = load_pretrained(full_size_checkpoint, device=CUDA)
    plain = load_pretrained(full_size_checkpoint, device=CUDA, attention="reference")
    batch = make_batch(model, 2, 96, seed=2, device=CUDA)
    with torch.no_grad():
        fused = model(batch.input_ids, batch.langs, causal=True, attention_mask=batch.attention_mask)
        reference = plain(batch.input_ids, batch.langs, causal=True, attention_mask=batch.attention_mask)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-4)


def test_cached_generation_equals_full_recomputation_on_cuda(full_size_checkpoint):
    model = load_pretrained(full_size_checkpoint, device=CUDA)
    assert PRESETS[FULL_SIZE].objective == "clm"
    input_ids, mask = left_pad([random_ids(64139, (1, 10))[0].tolist(), random_ids(64139, (1, 4), 1)[0].tolist()])
    out = generate(
        model, input_ids, torch.tensor([0, 1]), attention_mask=mask, max_new_tokens=32, stop_at_eos=False,
        output_logits=True,
    )  # fmt: skip
    for row in range(2):
        prompt = input_ids[row][mask[row]].to(CUDA)
        full = torch.cat([prompt, out.tokens[row, :-1]])[None]
        with torch.no_grad():
            logits = model(full, row, causal=True)[0, len(prompt) - 1 :]
        assert torch.equal(logits.argmax(-1), out.tokens[row])
        torch.testing.assert_close(out.logits[row], logits, rtol=0, atol=1e-4)
