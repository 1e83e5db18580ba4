"""xlm.fast: the same model with other kernels gives the plain model's logits (1e-5) and tokens, at any size,
and the model itself is left as it was (the speed is composed from outside: no hook, no patched instance)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import env_flag, random_ids, seeded_model, skip_or_fail

from xlm import fast
from xlm.checkpoint import load_pretrained
from xlm.config import PRESETS
from xlm.errors import InputError
from xlm.generation import decode_one, generate, prefill
from xlm.inputs import left_pad
from xlm.model import XLM
from xlm.parity import rounding_bound

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
def decoder(gemv) -> fast.FastDecoder:
    return fast.FastDecoder()


def fast_forward(model: XLM, *args, **kwargs):
    """The model's forward with every matrix product on `fast.linear`."""
    with fast.kernels():
        return model(*args, **kwargs)


# --- The kernels against F.linear in float64 ----------------------------------------------------------------


ROWS = [1, 2, 3, 5, 8, 15, 16]  # 1 (bf16: 1-2): the streaming loop; more: tiles, x in groups of 4, 2 and 1 rows


@pytest.mark.parametrize("rows", ROWS)
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


@pytest.mark.parametrize("offset", [1, 7], ids=["4 bytes off", "28 bytes off"])
def test_gemv_kernel_reads_weights_at_any_alignment(gemv, offset):
    """Memory-mapped tensors start wherever the file puts them: the products do not depend on it."""
    generator = torch.Generator().manual_seed(offset)
    w = torch.randn(300 * 1024 + offset, generator=generator)[offset:].view(300, 1024)
    assert w.data_ptr() % 64 != 0
    x = torch.randn(1, 1024, generator=generator)
    exact = F.linear(x.double(), w.double())
    torch.testing.assert_close(gemv.gemv(x, w, None).double(), exact, rtol=0, atol=2e-6 * 1024**0.5)


def test_align_weights_puts_every_weight_on_a_page_of_one_huge_page_block_with_its_values():
    model = seeded_model(dataclasses.replace(CONFIG, vocab_size=8192, dim=128))  # 4 MB of embeddings: 2 huge pages
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        misaligned = torch.empty(model.output_bias.numel() + 3)[3:]
        misaligned.copy_(model.output_bias)
        model.output_bias.data = misaligned  # 12 bytes past the allocator's alignment, as a memory-mapped file's
    params = list(model.parameters())
    assert fast.align_weights(model) == len(params)
    starts = sorted(p.data_ptr() for p in params)
    assert starts[0] % fast.HUGE_PAGE == 0 and all(start % 4096 == 0 for start in starts)
    ends = sorted(p.data_ptr() + p.nbytes for p in params)
    assert all(end <= start for end, start in zip(ends[:-1], starts[1:], strict=True))  # no overlaps
    assert ends[-1] - starts[0] < sum(p.nbytes for p in params) + 4096 * len(params)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    if transparent_huge_pages_on():  # the kernel was asked for huge pages, and takes the block as eligible
        assert smaps_field(starts[0], "THPeligible") == 1


def transparent_huge_pages_on() -> bool:
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and "[never]" not in setting.read_text()


def smaps_field(address: int, field: str) -> int:
    """`field` of the memory mapping of this process that holds `address` (/proc/self/smaps)."""
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(part, 16) for part in head.split("-"))
            mapping = low <= address < high
        elif mapping and line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("in_features", [16, 40, 1027])  # bf16 pairs: 1027 ends in a half pair
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "2 bytes off"])
def test_gemv_kernel_in_bf16_accumulates_in_fp32_and_rounds_once(gemv, rows, in_features, offset):
    """bf16 weights are read as 32-bit words of two values each: any width, any alignment, every row of x."""
    generator = torch.Generator().manual_seed(rows * in_features + offset)
    x = torch.randn(rows, in_features, generator=generator).bfloat16()
    w = torch.randn(64 * in_features + offset, generator=generator).bfloat16()[offset:].view(64, in_features)
    b = torch.randn(64, generator=generator).bfloat16()
    y = gemv.gemv(x, w, b)
    exact = F.linear(x.double(), w.double(), b.double())  # the bf16 inputs are exact in float64
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, exact.float().bfloat16())  # one rounding of a sum that fp32 holds to ~1e-6


def test_linear_equals_f_linear_for_every_route():
    """Rows <= GEMV_MAX_ROWS (kernel), more rows in fp32 (oneDNN, with autograd too), float64 (F.linear)."""
    w, b = torch.randn(48, 40), torch.randn(48)
    for shape in [(1, 1, 40), (2, 40), (4, 3, 40), (3, 7, 40), (40,)]:  # 1, 2, 12 rows: the kernel; 21: oneDNN
        x = torch.randn(shape)
        torch.testing.assert_close(fast.linear(x, w, b), F.linear(x, w, b), rtol=0, atol=TOL)
    x = torch.randn(5, 40, requires_grad=True)
    fast.linear(x, w, b).sum().backward()  # with gradients: differentiable (tests/test_fast_train.py)
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 40))
    x64 = torch.randn(2, 40, dtype=torch.float64)
    assert torch.equal(fast.linear(x64, w.double(), b.double()), F.linear(x64, w.double(), b.double()))


# --- The model ----------------------------------------------------------------------------------------------


def module_state(model: XLM) -> list:
    """Every module's class and instance attributes, and every parameter's identity and values."""
    modules = [(name, type(m), sorted(vars(m)), sorted(m._modules)) for name, m in model.named_modules()]
    return [modules, [(name, p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()]]


def test_the_fast_path_leaves_the_model_as_it_was(gemv, plain, decoder):
    """No class swap, no attribute written: kernels() and FastDecoder compose with the model from outside."""
    before = module_state(plain)
    with torch.no_grad():
        fast_forward(plain, random_ids(CONFIG.vocab_size, (3, 9)), 0, causal=True)
    generate(plain, random_ids(CONFIG.vocab_size, (2, 5)), 0, max_new_tokens=4, decoder=decoder)
    after = module_state(plain)
    assert after[0] == before[0]
    assert all(a[:2] == b[:2] and torch.equal(a[2], b[2]) for a, b in zip(after[1], before[1], strict=True))


def test_kernels_route_every_product_of_a_forward(plain, monkeypatch):
    """Under kernels(), the blocks' nn.Linear and the tied head all reach `fast.linear` (6 per block + head)."""
    calls = []
    route = fast.linear
    monkeypatch.setattr(fast, "linear", lambda *args, **kwargs: calls.append(1) or route(*args, **kwargs))
    with torch.no_grad():
        fast_forward(plain, random_ids(CONFIG.vocab_size, (1, 4)), 0, causal=True)
        plain(random_ids(CONFIG.vocab_size, (1, 4)), 0, causal=True)  # outside the block: the plain F.linear
    assert len(calls) == 6 * CONFIG.n_layers + 1


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fast_forward_equals_plain(gemv, plain, causal):
    ids = random_ids(CONFIG.vocab_size, (3, 17))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 12:] = False
    langs = torch.tensor([0, 1, 0])
    with torch.no_grad():
        for rows, width in ((3, 17), (2, 5), (1, 1)):  # 51 positions (oneDNN in fp32); 10 and 1 (the decoding kernel)
            args = (ids[:rows, :width], langs[:rows])
            kwargs = dict(causal=causal, attention_mask=mask[:rows, :width])
            torch.testing.assert_close(fast_forward(plain, *args, **kwargs), plain(*args, **kwargs), rtol=0, atol=TOL)


@pytest.mark.parametrize("batch", [1, 2, 3], ids=["1 row", "2 rows", "3 rows"])
def test_fast_generation_gives_the_plain_tokens(plain, decoder, batch):
    """Greedy and sampled: the same tokens, logits within 1e-5 at every step, left-padded rows included."""
    prompts = [random_ids(CONFIG.vocab_size, (1, n), seed=n)[0].tolist() for n in (9, 4, 6)[:batch]]
    input_ids, attention_mask = left_pad(prompts)
    for temperature in (0.0, 1.0):
        runs = [
            generate(
                plain, input_ids, 1, attention_mask=attention_mask, max_new_tokens=24, temperature=temperature,
                generator=torch.Generator().manual_seed(3), stop_at_eos=False, output_logits=True, decoder=chosen,
            )
            for chosen in (None, decoder)
        ]  # fmt: skip
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        torch.testing.assert_close(runs[1].logits, runs[0].logits, rtol=0, atol=TOL)


def test_fast_cached_decoding_equals_its_own_full_forward(plain, decoder):
    """The cache stays exact under the new kernels: the logits of every step equal one causal forward."""
    input_ids = random_ids(CONFIG.vocab_size, (1, 7))
    out = generate(plain, input_ids, 0, max_new_tokens=20, stop_at_eos=False, output_logits=True, decoder=decoder)
    with torch.no_grad():
        whole = fast_forward(plain, torch.cat([input_ids, out.tokens], dim=1), 0, causal=True)[:, 6:-1]
    torch.testing.assert_close(out.logits, whole, rtol=0, atol=TOL)


def bf16_bound(logits: torch.Tensor) -> float:
    """How far a bf16 computation of these logits may be from another: 4 bf16 roundings of the largest logit
    (xlm.parity.rounding_bound). Measured here: the plain bf16 model 1.5-2.0 roundings from fp32, the fused
    bf16 step 1.2, the kernels' bf16 forward 0 from the plain bf16 one (the same fp32 sums, rounded once)."""
    return rounding_bound(torch.bfloat16, logits)


def test_bf16_fast_forward_stays_within_bf16_rounding_of_the_plain_bf16(gemv, plain):
    """Both accumulate in fp32 and round to bf16: they differ by bf16 rounding at the logits' scale, no more.

    Top-1 agreement is not a criterion: two logits within one rounding of each other may swap places, so a
    flipped argmax is allowed exactly where the top two are that close, and nowhere else.
    """
    bf16 = copy.deepcopy(plain).to(torch.bfloat16)
    ids = random_ids(CONFIG.vocab_size, (4, 16))
    with torch.no_grad():
        for rows in (ids, ids[:1, :1], ids[:2, :1]):
            a, b = bf16(rows, 0, causal=True).float(), fast_forward(bf16, rows, 0, causal=True).float()
            bound = bf16_bound(a)
            assert (a - b).abs().max() <= bound
            top2 = a.topk(2, dim=-1).values  # (..., 2)
            flipped = a.argmax(-1) != b.argmax(-1)
            assert (top2[..., 0] - top2[..., 1])[flipped].le(2 * bound).all()


def count_onednn_calls(monkeypatch) -> list:
    """Record every product that `fast.linear` sends to oneDNN's linear (and still compute it there)."""
    calls = []
    route = fast.onednn_linear
    monkeypatch.setattr(fast, "onednn_linear", lambda x, *rest: calls.append(x.dtype) or route(x, *rest))
    return calls


@pytest.mark.skipif(not fast.ONEDNN_BF16, reason="oneDNN without bf16 instructions: bf16 stays with F.linear")
def test_forward_products_in_bf16_take_onednn_from_the_row_threshold_and_round_once(monkeypatch):
    """bf16 products of ONEDNN_BF16_MIN_ROWS rows and more run on oneDNN's linear, fewer on F.linear; both sum in
    fp32 and round once, so each output is within one bf16 rounding (2^-8 relative) of the exact product of the
    bf16 inputs, plus fp32 summation error (~1e-6 relative, bounded here by 2^-16 of the row's absolute sum)."""
    calls = count_onednn_calls(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 1027, generator=generator).bfloat16(), torch.randn(48, generator=generator).bfloat16()
    for rows, expected in ((fast.ONEDNN_BF16_MIN_ROWS - 1, []), (fast.ONEDNN_BF16_MIN_ROWS, [torch.bfloat16])):
        calls.clear()
        x = torch.randn(rows, 1027, generator=generator).bfloat16()
        with torch.no_grad():
            y = fast.linear(x, w, b).double()
        exact = F.linear(x.double(), w.double(), b.double())  # bf16 inputs are exact in float64
        magnitude = F.linear(x.double().abs(), w.double().abs(), b.double().abs())
        assert calls == expected
        assert ((y - exact).abs() <= 2**-8 * exact.abs() + 2**-16 * magnitude).all()


def test_fast_forward_of_many_rows_in_bf16_stays_within_bf16_rounding_of_the_plain(gemv, plain, monkeypatch):
    """A bf16 forward of 4 x 80 positions (every product over ONEDNN_BF16_MIN_ROWS rows: oneDNN's linear where it
    has bf16 instructions) against the plain bf16 model (torch's bf16 matmul): within `bf16_bound`, a flipped
    argmax only where the top two logits are that close; the fp32 fast forward of the same rows within 1e-5."""
    calls = count_onednn_calls(monkeypatch)
    bf16 = copy.deepcopy(plain).to(torch.bfloat16)
    ids = random_ids(CONFIG.vocab_size, (4, 80))
    assert ids.numel() >= fast.ONEDNN_BF16_MIN_ROWS
    with torch.no_grad():
        a, b = bf16(ids, 0, causal=True).float(), fast_forward(bf16, ids, 0, causal=True).float()
        bound = bf16_bound(a)
        assert (a - b).abs().max() <= bound
        top2 = a.topk(2, dim=-1).values  # (B, T, 2)
        assert (top2[..., 0] - top2[..., 1])[a.argmax(-1) != b.argmax(-1)].le(2 * bound).all()
        products = 6 * CONFIG.n_layers + 1
        assert calls == ([torch.bfloat16] * products if fast.ONEDNN_BF16 else [])
        calls.clear()
        exact = plain(ids, 0, causal=True)
        torch.testing.assert_close(fast_forward(plain, ids, 0, causal=True), exact, rtol=0, atol=TOL)
        assert calls == ([torch.float32] * products if fast.ONEDNN else [])


# --- The decoding step in one call -------------------------------------------------------------------------


def no_fallback(*args, **kwargs):
    raise AssertionError("fused_decode_one fell back to the PyTorch step")


def fused_only() -> fast.FastDecoder:
    """A decoder that steps through the C++ step only: a fallback to `decode_one` fails the test."""
    decoder = fast.FastDecoder()
    decoder.fallback = no_fallback
    return decoder


def prompts(rows: int) -> list[list[int]]:
    """`rows` seeded prompts of 2-9 tokens: batched, they are left-padded by 0-7 positions."""
    lengths = (7, 3, 5, 9, 2, 6, 4, 8)
    return [random_ids(CONFIG.vocab_size, (1, lengths[i % 8]), seed=i)[0].tolist() for i in range(rows)]


@torch.no_grad()
def step_both_ways(plain: XLM, fused: XLM, lang, real: torch.Tensor, steps: int = 6):
    """Prefill a left-padded batch into two caches, then decode `steps` tokens with `decode_one` (plain) and
    `fused_decode_one` (fused), feeding both the plain model's greedy tokens.

    Returns the (plain, fused) logits of every step and the two caches afterwards.
    """
    input_ids, mask = left_pad(prompts(real.size(0)))
    B, T = input_ids.shape
    models = (plain, fused)
    caches = [model.new_cache(B, T + steps) for model in models]
    logits = [prefill(model, input_ids, lang, mask, cache) for model, cache in zip(models, caches, strict=True)]
    position, row_lang = mask.sum(dim=1), None if lang is None else torch.as_tensor(lang).expand(B)
    pairs = []
    for step in range(steps):
        token = logits[0].argmax(dim=-1).masked_fill(~real, CONFIG.pad_id)
        kwargs = dict(slot=T + step, position=position, real=real)
        logits = [
            decode_one(plain, token, row_lang, caches[0], **kwargs),
            fast.fused_decode_one(fused, token, row_lang, caches[1], fallback=no_fallback, **kwargs),
        ]
        pairs.append(logits)
        position = position + real
    return pairs, caches


def dtype_bound(dtype: torch.dtype, expected: torch.Tensor) -> float:
    """fp32: TOL (another summation order). bf16: `bf16_bound` at the scale of `expected` (the plain bf16 step
    rounds every activation to bf16, the fused one only the products' inputs)."""
    return TOL if dtype == torch.float32 else bf16_bound(expected.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 3, 8, 16])
def test_fused_step_equals_decode_one_and_updates_the_cache_alike(gemv, plain, rows, dtype):
    """Same logits (fp32: 1e-5; bf16: a few roundings) and the same keys, values and slot flags written, with
    left-padded prompts and finished rows (every third row from the second), 1 row to 16 (the products' tiles)."""
    real = torch.tensor([i % 3 != 1 for i in range(rows)])
    model = plain.to(dtype)
    pairs, (cache, fused_cache) = step_both_ways(model, copy.deepcopy(model), (torch.arange(rows) + 1) % 2, real)
    for expected, got in pairs:
        assert got.dtype == torch.float32 and got.shape == (rows, CONFIG.vocab_size)
        expected = expected[real].float()  # a finished row's logits are unused
        torch.testing.assert_close(got[real], expected, rtol=0, atol=dtype_bound(dtype, expected))
    assert torch.equal(fused_cache.valid, cache.valid) and not cache.valid[~real, -1].any()
    for mine, theirs in zip(fused_cache.k + fused_cache.v, cache.k + cache.v, strict=True):
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=0, atol=dtype_bound(dtype, theirs))


def test_fused_step_without_language_embeddings(gemv):
    """xlm-mlm-17/100-1280 have no language table: the step takes lang=None."""
    plain = seeded_model(dataclasses.replace(CONFIG, use_lang_emb=False))
    assert plain.lang_embeddings is None
    pairs, _ = step_both_ways(plain, copy.deepcopy(plain), None, torch.tensor([True, True]))
    for expected, got in pairs:
        torch.testing.assert_close(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("batch", [1, 4, 8, 16])
def test_fused_generation_gives_the_plain_tokens_and_never_falls_back(gemv, plain, batch):
    input_ids, attention_mask = left_pad(prompts(batch))
    a, b = (
        generate(plain, input_ids, 1, attention_mask=attention_mask, max_new_tokens=30, stop_at_eos=False,
                 output_logits=True, decoder=chosen)
        for chosen in (None, fused_only())
    )  # fmt: skip
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=TOL)


@pytest.mark.parametrize("batch", [1, 16])
def test_fused_bf16_step_stays_near_fp32(gemv, plain, batch):
    """bf16 weights and cache, fp32 activations (rounded to bf16 only as the products' inputs): within a few bf16
    ulps of the fp32 model's logits, the fp32 model's greedy tokens, and no farther from fp32 than the plain bf16
    model is (which rounds every activation). 16 rows: the products' tiles (vdpbf16ps where the CPU has it).

    A token may differ only where fp32's top two logits are within two bounds (a near tie: at 16 rows one row's
    first two are 0.006 apart, and both bf16 models take the second); logits are compared up to that step.
    """
    bf16 = copy.deepcopy(plain).to(torch.bfloat16)
    input_ids, mask = (random_ids(CONFIG.vocab_size, (1, 8)), None) if batch == 1 else left_pad(prompts(batch))
    runs = [
        generate(model, input_ids, 0, attention_mask=mask, max_new_tokens=16, stop_at_eos=False, output_logits=True,
                 decoder=chosen)
        for model, chosen in ((plain, None), (bf16, None), (bf16, fused_only()))
    ]  # fmt: skip
    reference, bound = runs[0].logits.float(), bf16_bound(runs[0].logits)
    top2 = reference.topk(2, dim=-1).values  # (B, N, 2)
    same_prefix = []  # (B, N): the steps whose logits were computed on the fp32 model's tokens
    for run in runs[1:]:
        differs = run.tokens != runs[0].tokens  # (B, N)
        same_prefix.append(differs.cumsum(dim=1) - differs.long() == 0)
        assert (top2[..., 0] - top2[..., 1])[differs & same_prefix[-1]].le(2 * bound).all()
    both = same_prefix[0] & same_prefix[1]
    plain_error, fused_error = ((run.logits.float() - reference).abs().amax(-1)[both].max() for run in runs[1:])
    assert fused_error <= bound  # the weights themselves are rounded to bf16
    assert fused_error <= plain_error


def test_fused_step_falls_back_for_big_batches_and_gradients(gemv, plain):
    calls = []

    def fallback(*args, **kwargs):
        calls.append(args[1].size(0))
        return decode_one(*args, **kwargs)

    model = copy.deepcopy(plain)
    counting = fast.FastDecoder()
    counting.fallback = fallback
    rows = fast.FUSED_MAX_ROWS + 1
    generate(model, random_ids(CONFIG.vocab_size, (rows, 4)), 0, max_new_tokens=3, stop_at_eos=False, decoder=counting)
    assert calls == [rows, rows]
    cache = model.new_cache(1, 4)
    fast.fused_decode_one(
        model,
        torch.tensor([20]),
        torch.tensor([0]),
        cache,
        slot=0,
        position=torch.tensor([0]),
        real=torch.tensor([True]),
        fallback=fallback,
    )  # fmt: skip  (gradients enabled, parameters requiring them: autograd needs the PyTorch step)
    assert calls[-1] == 1


def test_fused_step_refuses_ids_outside_the_tables(gemv, plain):
    """An id past a table would read memory outside it: the step checks every id it looks up."""
    model = plain
    cache = model.new_cache(1, 4)
    one = torch.tensor([0])
    cases = [
        ((torch.tensor([CONFIG.vocab_size]), one, one), "token out of range"),
        ((one, torch.tensor([2]), one), "lang out of range"),
        ((one, one, torch.tensor([CONFIG.max_positions])), "position out of range"),
    ]
    for (token, lang, position), message in cases:
        with torch.no_grad(), pytest.raises(RuntimeError, match=message):
            fast.fused_decode_one(model, token, lang, cache, slot=0, position=position, real=torch.tensor([True]))
    with torch.no_grad(), pytest.raises(InputError, match="the cache holds 4 positions"):
        fast.fused_decode_one(model, one, one, cache, slot=4, position=one, real=torch.tensor([True]))


def test_products_off_the_cpu_stay_with_f_linear(monkeypatch):
    """On CUDA and other devices `linear` is F.linear: their BLAS is already good at this."""
    monkeypatch.setattr(fast, "onednn_linear", None)  # would fail if called
    x, w = torch.empty(3, 8, device="meta"), torch.empty(5, 8, device="meta")
    y = fast.linear(x, w)
    assert y.device.type == "meta" and y.shape == (3, 5)


def test_the_first_build_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    """Building the kernels takes ~45 s: a first use prints one line on stderr; a cached build says nothing."""
    import torch.utils.cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = fast.kernel_build_name()
    assert not fast.kernel_is_built(name)
    built = []

    def load(name, *args, **kwargs):  # stands for the compiler: writes the library where torch would
        built.append(name)
        (tmp_path / name / f"{name}.so").write_bytes(b"")
        raise RuntimeError("not a real build")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    with pytest.warns(UserWarning, match="not a real build"):
        assert fast.gemv_kernel.__wrapped__() is None
    assert built == [name] and fast.kernel_is_built(name)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compiling the CPU kernels" in err and "~45 s" in err
    with pytest.warns(UserWarning):
        fast.gemv_kernel.__wrapped__()
    assert capsys.readouterr().err == ""  # already built: no notice


@pytest.mark.slow
def test_optimized_full_size_model_equals_plain(full_size_checkpoint):
    """The real shapes (1024-wide, 64,139-row head): forward and 32 greedy steps, batch 1, 2 and 8 (the
    products' tiles on the real widths)."""
    plain = load_pretrained(full_size_checkpoint)
    aligned = load_pretrained(full_size_checkpoint)
    fast.align_weights(aligned)  # as `xlm --fast` does: the same values, on huge pages
    decoder = fused_only()  # every step in the fused call
    ids = random_ids(plain.config.vocab_size, (8, 24))
    with torch.no_grad():
        torch.testing.assert_close(
            fast_forward(aligned, ids[:2], 0, causal=True), plain(ids[:2], 0, causal=True), rtol=0, atol=TOL
        )
    for rows in (ids[:1, :9], ids[:2, :9], ids[:, :9]):
        a, b = (
            generate(m, rows, 0, max_new_tokens=32, stop_at_eos=False, output_logits=True, decoder=d)
            for m, d in ((plain, None), (aligned, decoder))
        )
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own use of torch.jit
def test_compiled_decoding_gives_the_plain_tokens(plain):
    """`compile_decoding=True`: batches over FUSED_MAX_ROWS decode through torch.compile, with the same tokens,
    on a model built with the reference attention (what Inductor fuses)."""
    compiled = fast.FastDecoder(compile_decoding=True)
    assert compiled.fallback is not decode_one  # the compiled one
    reference = XLM(CONFIG, attention="reference").eval()
    reference.load_state_dict(plain.state_dict())
    for rows in (fast.FUSED_MAX_ROWS + 1, fast.FUSED_MAX_ROWS + 3):
        input_ids, attention_mask = left_pad(prompts(rows))
        runs = [
            generate(
                model, input_ids, 1, attention_mask=attention_mask, max_new_tokens=12, stop_at_eos=False,
                output_logits=True, decoder=chosen,
            )
            for model, chosen in ((plain, None), (reference, compiled))
        ]  # fmt: skip
        assert torch.equal(runs[0].tokens, runs[1].tokens)
        torch.testing.assert_close(runs[1].logits, runs[0].logits, rtol=0, atol=TOL)
