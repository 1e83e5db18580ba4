"""xlm.fast in training: the fast step (oneDNN products with their gradients, the LM head and its loss fused over
chunks of positions) computes the plain step's loss and gradients.

The reference is the same step in float64. fp32 rounds each product's sum at ~6e-8 relative per addition, and
both steps round: the claim tested is that the fast step is as exact as the plain one, tensor by tensor (its
error against float64 at most 3x the plain step's, plus 1e-7 of the tensor's size: a wrong gradient is off by
~100% of it). bf16 autocast rounds the products' operands to 8 significant bits (2^-9 relative, 2e-3): there the
fast step's error must stay within 2x the plain bf16 step's, which would fail by orders of magnitude if a
gradient were computed in the wrong precision, or wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_model

from xlm import fast, objectives
from xlm.config import PRESETS
from xlm.data import TrainBatch
from xlm.model import XLM
from xlm.train import Objectives

CONFIG = dataclasses.replace(
    PRESETS["xlm-clm-enfr-1024"], vocab_size=512, dim=64, n_layers=2, dropout=0.0, attention_dropout=0.0
)


def stream_batch(vocab_size: int, rows: int = 3, width: int = 40, seed: int = 0) -> TrainBatch:
    ids = torch.randint(14, vocab_size, (rows, width), generator=torch.Generator().manual_seed(seed))
    return TrainBatch(ids, torch.zeros_like(ids), torch.arange(width).expand_as(ids), torch.ones_like(ids).bool())


def batch_for(objective: str, vocab_size: int) -> TrainBatch:
    batch = stream_batch(vocab_size)
    if objective == "clm":
        return batch
    return objectives.mask_batch(batch, torch.Generator().manual_seed(1), mask_id=5, vocab_size=vocab_size)


def step_gradients(
    model: XLM, objective: str, batch: TrainBatch, *, fast_step: bool, amp: torch.dtype | None = None, **head
) -> tuple[float, dict[str, torch.Tensor]]:
    """The trainer's forward and backward (loss sum / count), plain or fast: (loss sum, every parameter's grad)."""
    model.zero_grad(set_to_none=True)
    with fast.FastKernels() if fast_step else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext():
            if fast_step:
                states = objectives.clm_states if objective == "clm" else objectives.mlm_states
                summed, count = fast.summed_head_cross_entropy(model, *states(model, batch), **head)
            else:
                summed, count = Objectives(model)(objective, batch)
        (summed / count).backward()
    return summed.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def models() -> tuple[XLM, XLM]:
    """The same weights in fp32 and float64, in training mode (dropout off)."""
    model = seeded_model(CONFIG).train()
    exact = seeded_model(CONFIG).train().double()
    return model, exact


def errors(grads: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: (g.double() - exact[name]).norm().item() for name, g in grads.items()}


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("chunk", [fast.HEAD_CHUNK, 7], ids=["one-chunk", "chunks-of-7"])
def test_fast_fp32_step_is_as_exact_as_the_plain_step(models, objective, chunk):
    model, exact_model = models
    batch = batch_for(objective, CONFIG.vocab_size)
    exact_loss, exact = step_gradients(exact_model, objective, batch, fast_step=False)
    plain_loss, plain = step_gradients(model, objective, batch, fast_step=False)
    fast_loss, ours = step_gradients(model, objective, batch, fast_step=True, chunk=chunk)
    assert abs(fast_loss - exact_loss) <= 1e-6 * abs(exact_loss)  # a sum of ~100 fp32 losses, added in float64
    assert set(ours) == set(exact) and all(g is not None for g in ours.values())
    plain_error, fast_error = errors(plain, exact), errors(ours, exact)
    for name, grad in exact.items():
        assert fast_error[name] <= 3 * plain_error[name] + 1e-7 * grad.norm().item(), name
    assert abs(plain_loss - exact_loss) <= 1e-6 * abs(exact_loss)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
@pytest.mark.parametrize("scratch", [False, True], ids=["fresh-temporaries", "scratch"])
def test_fast_bf16_step_is_as_exact_as_the_plain_bf16_step(models, objective, scratch):
    model, exact_model = models
    batch = batch_for(objective, CONFIG.vocab_size)
    exact_loss, exact = step_gradients(exact_model, objective, batch, fast_step=False)
    plain_loss, plain = step_gradients(model, objective, batch, fast_step=False, amp=torch.bfloat16)
    head = {"chunk": 7, "scratch": fast.Scratch() if scratch else None}
    fast_loss, ours = step_gradients(model, objective, batch, fast_step=True, amp=torch.bfloat16, **head)
    # The loss: the logits are rounded to bf16 in both (autocast's product), then the same fp32 cross-entropy.
    assert abs(fast_loss - exact_loss) <= 2 * abs(plain_loss - exact_loss) + 1e-6 * abs(exact_loss)
    plain_error, fast_error = errors(plain, exact), errors(ours, exact)
    for name, grad in exact.items():
        assert fast_error[name] <= 2 * plain_error[name] + 2**-9 * 1e-2 * grad.norm().item(), name
    assert max(fast_error[name] / max(exact[name].norm().item(), 1e-3) for name in exact) > 1e-5  # bf16 did round


def test_a_scratch_keeps_its_memory_across_steps_and_changes_no_result(models):
    """Two bf16 steps on different batches with one Scratch: the second reuses the first's buffers, which still
    hold the first step's values, and computes exactly what it computes with fresh temporaries (the same
    kernels on the same operands). The chunks of 7 end on a shorter one, which takes the front of each buffer."""
    model, _ = models
    scratch, bf16 = fast.Scratch(), {"amp": torch.bfloat16, "chunk": 7}
    step_gradients(model, "clm", stream_batch(CONFIG.vocab_size, seed=1), fast_step=True, scratch=scratch, **bf16)
    memory = {name: buffer.data_ptr() for name, buffer in scratch._buffers.items()}
    assert set(memory) == {"table", "logits", "logits32", "grad_weight"}
    batch = stream_batch(CONFIG.vocab_size, seed=2)
    loss, grads = step_gradients(model, "clm", batch, fast_step=True, scratch=scratch, **bf16)
    assert {name: buffer.data_ptr() for name, buffer in scratch._buffers.items()} == memory
    fresh_loss, fresh = step_gradients(model, "clm", batch, fast_step=True, **bf16)
    assert loss == fresh_loss
    assert all(torch.equal(grads[name], fresh[name]) for name in fresh)


def test_every_product_of_a_fast_step_runs_where_fast_says(models):
    """Forward and backward of the tiny model: every forward product on oneDNN, and each gradient product on the
    kernel chosen for it (GRAD_INPUT_KERNEL; grad_weight_kernel by the weight's shape), the rest on MKL."""
    if not fast.ONEDNN:
        pytest.skip("this torch build has no oneDNN linear")
    model, _ = models
    with torch.profiler.profile() as prof:
        step_gradients(model, "clm", batch_for("clm", CONFIG.vocab_size), fast_step=True)
    counts = {event.key: event.count for event in prof.key_averages()}
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)] + [model.embeddings.weight]
    assert len(weights) == 6 * CONFIG.n_layers + 1  # the head (one chunk here) is the tied embeddings
    on_onednn = len(weights) * (1 + (fast.GRAD_INPUT_KERNEL == "onednn"))  # forward, grad_x
    on_onednn += sum(fast.grad_weight_kernel(*w.shape) == "onednn" for w in weights)  # grad_W
    assert counts.get("mkldnn::_linear_pointwise", 0) == on_onednn
    on_mkl = 3 * len(weights) - on_onednn
    assert counts.get("aten::mm", 0) + counts.get("aten::addmm", 0) == on_mkl > 0  # (2 of the 4 shapes here)


@pytest.mark.parametrize("rows", [256, 2040])
def test_onednn_linear_gradients_at_the_models_shapes(rows):
    """The layer shapes of xlm-clm-enfr-1024, where oneDNN picks its big-matrix kernels: x (rows, 1024) through
    1024 -> 4096 -> 1024. Each gradient as exact as F.linear's against float64 (see the module docstring)."""
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1024, generator=generator)
    layers = [(torch.randn(o, i, generator=generator) * i**-0.5, torch.randn(o, generator=generator))
              for o, i in ((4096, 1024), (1024, 4096))]  # fmt: skip
    g = torch.randn(rows, 1024, generator=generator)

    def gradients(linear, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in (x, *layers[0], *layers[1])]
        h, w1, b1, w2, b2 = inputs
        y = linear(F.gelu(linear(h, w1, b1)), w2, b2)
        y.backward(g.to(dtype))
        return [t.grad for t in inputs]

    exact = gradients(F.linear, torch.float64)
    plain, ours = gradients(F.linear, torch.float32), gradients(fast.training_linear, torch.float32)
    for e, p, o in zip(exact, plain, ours, strict=True):
        assert (o.double() - e).norm() <= 3 * (p.double() - e).norm() + 1e-7 * e.norm()


def test_the_fused_head_without_autograd_gives_the_losses_only(models):
    model, _ = models
    batch = batch_for("clm", CONFIG.vocab_size)
    with torch.no_grad():
        h, targets = objectives.clm_states(model, batch)
        summed, count = fast.summed_head_cross_entropy(model, h, targets, chunk=5)
        plain, plain_count = objectives.summed_cross_entropy(model.logits(h), targets)
    assert not summed.requires_grad and summed.dtype == torch.float64 and count == plain_count == targets.numel()
    assert abs(summed.item() - plain.item()) <= 1e-6 * abs(plain.item())
