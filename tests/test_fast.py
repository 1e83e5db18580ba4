"""xlm.fast: the same model with other kernels gives the plain model's logits (1e-5) and tokens, at any size."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import env_flag, random_ids, seeded_model, skip_or_fail

from xlm import fast
from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.generate import generate, left_pad
from xlm.model import XLM

CONFIG = dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], vocab_size=211, dim=40, n_layers=2, n_heads=4)
TOL = 1e-5


@pytest.fixture(scope="module")
def gemv():
    """`torch.ops.xlm` with the compiled kernel: skipped where it cannot be built, a failure in CI (which has a
    compiler and the ninja wheel from the test extras), so that CI never passes without testing it."""
    kernel = fast.gemv_kernel()
    if kernel is None:
        skip_or_fail("the decoding kernel cannot be built here (needs g++ and ninja)", required=env_flag("CI"))
    return kernel


@pytest.fixture
def plain() -> XLM:
    return seeded_model(CONFIG)


@pytest.fixture
def optimized(plain) -> XLM:
    return fast.optimize(copy.deepcopy(plain))


# --- The kernels against F.linear in float64 ----------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
@pytest.mark.parametrize("in_features", [16, 40, 1027])  # 40 and 1027: tails after the vectorized part
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_gemv_kernel_computes_x_wT_plus_b(gemv, rows, in_features, with_bias):
    generator = torch.Generator().manual_seed(rows * in_features)
    x = torch.randn(rows, in_features, generator=generator)
    w = torch.randn(300, in_features, generator=generator)
    b = torch.randn(300, generator=generator) if with_bias else None
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    y = gemv.gemv(x, w, b)
    assert y.dtype == torch.float32 and y.shape == (rows, 300)
    fp32_rounding = 2e-6 * in_features**0.5  # a sum of I terms of size ~1 in fp32, any order
    torch.testing.assert_close(y.double(), exact, rtol=0, atol=fp32_rounding)


def test_gemv_kernel_in_bf16_accumulates_in_fp32_and_rounds_once(gemv):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1024, generator=generator).bfloat16()
    w = torch.randn(64, 1024, generator=generator).bfloat16()
    b = torch.randn(64, generator=generator).bfloat16()
    y = gemv.gemv(x, w, b)
    exact = F.linear(x.double(), w.double(), b.double())  # the bf16 inputs are exact in float64
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, exact.float().bfloat16())  # one rounding of a sum that fp32 holds to ~1e-6


def test_linear_equals_f_linear_for_every_route():
    """Rows <= GEMV_MAX_ROWS (kernel), more rows in fp32 (oneDNN), autograd and float64 (F.linear)."""
    w, b = torch.randn(48, 40), torch.randn(48)
    for shape in [(1, 1, 40), (2, 40), (3, 7, 40), (40,)]:
        x = torch.randn(shape)
        torch.testing.assert_close(fast.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=TOL)
    x = torch.randn(5, 40, requires_grad=True)
    fast.linear(x, w, b).sum().backward()  # with gradients: F.linear, differentiable
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 40))
    x64 = torch.randn(2, 40, dtype=torch.float64)
    assert torch.equal(fast.linear(x64, w.double(), b.double()), F.linear(x64, w.double(), b.double()))


# --- The model ----------------------------------------------------------------------------------------------


def test_optimize_swaps_kernels_not_weights(plain, optimized):
    assert fast.is_optimized(optimized) and not fast.is_optimized(plain)
    assert all(type(m) is not torch.nn.Linear for m in optimized.modules())
    reference = plain.state_dict()
    assert optimized.state_dict().keys() == reference.keys()
    assert all(torch.equal(t, reference[k]) for k, t in optimized.state_dict().items())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_optimized_forward_equals_plain(plain, optimized, causal):
    ids = random_ids(CONFIG.vocab_size, (3, 17))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 12:] = False
    langs = torch.tensor([0, 1, 0])
    with torch.no_grad():
        for rows in (3, 1):  # many rows (oneDNN in fp32) and one (the decoding kernel)
            width = 17 if rows == 3 else 1
            args = (ids[:rows, :width], langs[:rows])
            kwargs = dict(causal=causal, attention_mask=mask[:rows, :width])
            torch.testing.assert_close(optimized(*args, **kwargs), plain(*args, **kwargs), rtol=0, atol=TOL)


@pytest.mark.parametrize("batch", [1, 2, 3], ids=["1 row", "2 rows", "3 rows"])
def test_optimized_generation_gives_the_plain_tokens(plain, optimized, batch):
    """Greedy and sampled: the same tokens, logits within 1e-5 at every step, left-padded rows included."""
    prompts = [random_ids(CONFIG.vocab_size, (1, n), seed=n)[0].tolist() for n in (9, 4, 6)[:batch]]
    input_ids, attention_mask = left_pad(prompts)
    for temperature in (0.0, 1.0):
        runs = [
            generate(
                model, input_ids, 1, attention_mask=attention_mask, max_new_tokens=24, temperature=temperature,
                generator=torch.Generator().manual_seed(3), stop_at_eos=False, output_logits=True,
            )
            for model in (plain, optimized)
        ]  # fmt: skip
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        torch.testing.assert_close(runs[1].logits, runs[0].logits, rtol=0, atol=TOL)


def test_optimized_cached_decoding_equals_its_own_full_forward(optimized):
    """The cache stays exact under the new kernels: the logits of every step equal one causal forward."""
    input_ids = random_ids(CONFIG.vocab_size, (1, 7))
    out = generate(optimized, input_ids, 0, max_new_tokens=20, stop_at_eos=False, output_logits=True)
    with torch.no_grad():
        whole = optimized(torch.cat([input_ids, out.tokens], dim=1), 0, causal=True)[:, 6:-1]
    torch.testing.assert_close(out.logits, whole, rtol=0, atol=TOL)


def test_bf16_optimized_predicts_the_plain_bf16_tokens(plain):
    bf16 = copy.deepcopy(plain).to(torch.bfloat16)
    optimized = fast.optimize(copy.deepcopy(bf16))
    ids = random_ids(CONFIG.vocab_size, (4, 16))
    with torch.no_grad():
        for rows in (ids, ids[:1, :1], ids[:2, :1]):
            a, b = bf16(rows, 0, causal=True).float(), optimized(rows, 0, causal=True).float()
            assert (a - b).abs().max() < 0.05  # both accumulate in fp32; a bf16 ulp of logits ~5 is 0.03
            assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.95


def test_optimize_leaves_non_cpu_models_alone():
    with torch.device("meta"):
        model = XLM(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fast.optimize(model) is model
    assert not fast.is_optimized(model) and "nothing to do on meta" in str(caught[0].message)


@pytest.mark.slow
def test_optimized_full_size_model_equals_plain(full_size_checkpoint):
    """The real shapes (1024-wide, 64,139-row head): forward and 32 greedy steps, batch 1 and 2."""
    plain = load_pretrained(full_size_checkpoint)
    fast_ = fast.optimize(load_pretrained(full_size_checkpoint))
    ids = random_ids(plain.config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(fast_(ids, 0, causal=True), plain(ids, 0, causal=True), rtol=0, atol=TOL)
    for rows in (ids[:1, :9], ids[:, :9]):
        a, b = (generate(m, rows, 0, max_new_tokens=32, stop_at_eos=False, output_logits=True) for m in (plain, fast_))
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own use of torch.jit
def test_compiled_decoding_gives_the_plain_tokens(plain):
    """`compile_decoding=True`: generate's decode step through torch.compile, batch 1 and 2, same tokens."""
    compiled = fast.optimize(copy.deepcopy(plain), compile_decoding=True)
    assert callable(compiled.decode_step)
    prompts = [random_ids(CONFIG.vocab_size, (1, n), seed=n)[0].tolist() for n in (9, 4)]
    for rows in (prompts[:1], prompts):
        input_ids, attention_mask = left_pad(rows)
        runs = [
            generate(
                model, input_ids, 1, attention_mask=attention_mask, max_new_tokens=12, stop_at_eos=False,
                output_logits=True,
            )
            for model in (plain, compiled)
        ]  # fmt: skip
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        torch.testing.assert_close(runs[1].logits, runs[0].logits, rtol=0, atol=TOL)
