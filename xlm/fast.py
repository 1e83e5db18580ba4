"""Faster CPU inference, opt-in: the same model and weights, its matrix products computed by better kernels.

    decoder = xlm.fast.FastDecoder()                      # builds the kernels (~45 s once per machine, then cached)
    out = xlm.generate(model, ids, langs, max_new_tokens=20, decoder=decoder)   # or: xlm generate --fast
    with xlm.fast.kernels():                              # forwards and scoring: or xlm score --fast
        logits = model(ids, langs, causal=True)

Nothing here changes the model (xlm/model.py stays the one readable implementation and holds no hook for this
file): the speed is composed from outside. `kernels()` is a torch function mode under which every `F.linear`
call (nn.Linear's and the tied LM head's) runs on `linear` below; `FastDecoder` is a `generate` decoder whose
step is one C++ call.

Nearly all of XLM's inference time is its matrix products, and the plain model runs them with `F.linear`: MKL
for fp32, oneDNN for bf16. On CPUs both leave time on the table in two regimes that matter here (measurements
in docs/performance.md):

- Decoding, 1-16 rows per product: every weight is read once per token, so a step can be no faster than
  streaming the weights from memory. `F.linear` reaches ~30-60% of that speed at one row; `xlm/csrc/gemv.h`,
  plain C++ compiled on first use, comes within a few percent of it in fp32 and bf16, and from 2-3 rows
  multiplies every row by each weight it reads in register tiles (short forwards and prefills of up to 16
  rows take it too). What lies between the products (~150 small operations per step) then costs 10-20% more
  as PyTorch calls, so a whole decoding step of up to 16 rows is one C++ call too, `xlm/csrc/decode_step.cpp`
  (`fused_decode_one`): a second implementation of the model's forward pass for one token, held equal to
  xlm/model.py by tests/test_fast.py (`test_fused_step_equals_decode_one_and_updates_the_cache_alike`).
- fp32 with many rows (a forward, scoring, prefill): MKL's fp32 GEMM runs at a fraction of oneDNN's speed on
  AMD CPUs (MKL takes slower code paths on non-Intel CPUs); oneDNN's matmul on the *same* weight tensors,
  `torch.ops.mkldnn._linear_pointwise` (what torch.compile's CPU backend calls), is 1.3-1.8x faster.

No weight is transposed or repacked. Decoding streams every weight once per step, mostly faster from 2 MB pages
than from 4 KB ones (5-24% in docs/performance.md): `align_weights(model)` copies the weights into one block of
memory advised for transparent huge pages (same values; `xlm --fast` does it).
Results equal the plain model's within float rounding (another summation order: ~1e-6 relative, tested at 1e-5
on logits and on generated tokens). On CUDA and other devices, or where neither kernel is available, `linear` is
`F.linear`: cuBLAS is already good at this.

Training (`xlm train --fast`, composed the same way, from outside the model): with autograd, fp32 products go to
`onednn_linear`, whose backward runs both gradient products on oneDNN too (`training_linear`), and the LM head
and its cross-entropy run fused over chunks of positions (`summed_head_cross_entropy`), never holding all the
logits. The same math: losses and gradients as exact as the plain step's (tests/test_fast_train.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import mmap
import platform
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from xlm.errors import InputError
from xlm.generation import Decoder, decode_one, prefill
from xlm.model import XLM, KVCache

# Up to this many rows, the decoding kernel (gemv.h: each weight read once for all rows). A 1 x 16 forward under
# `kernels()`: fp32 42 ms against 58 with oneDNN from 3 rows, bf16 25 against 43 with torch's matmul; at 24-32
# rows fp32 the two kernels are even (docs/performance.md). 16 is also the fused step's limit, FUSED_MAX_ROWS.
GEMV_MAX_ROWS = 16
# bf16 from this many rows: oneDNN's linear, which adds the bias inside the kernel; torch's bf16 matmul (F.linear)
# first copies the bias into every output row (~40 ms for the 8 x 128 head's logits). Below it the two are within
# a few percent of each other, torch's ahead at 8-16 rows (docs/performance.md, Bounds).
ONEDNN_BF16_MIN_ROWS = 256
KERNEL_DIR = Path(__file__).parent / "csrc"  # gemv.h, gemv.cpp, decode_step.cpp
KERNEL_SOURCES = [KERNEL_DIR / "gemv.cpp", KERNEL_DIR / "decode_step.cpp"]
# -ffp-contract=fast: gemv.h's vector `acc += w * x` compiles to one fused multiply-add (GCC 12 does so by
# default; the flag keeps it so under other compilers' defaults).
KERNEL_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN's fp32 matmul on plain weights: x86 CPU builds of torch (aarch64 builds use it with ACL).
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_BF16 = ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()  # bf16 instructions (AVX512-BF16, AMX)
_built = {"gemv": False}  # set by gemv_kernel(); `linear` reads it (a plain flag: torch.compile can trace it)


# --- The kernels --------------------------------------------------------------------------------------------


@functools.cache
def gemv_kernel():
    """`torch.ops.xlm` with the compiled kernels of xlm/csrc; None if they cannot be built.

    `gemv(x, w, b)` (gemv.cpp): x @ w.T + b for 1-16 rows; `decode_step(...)` (decode_step.cpp): see
    `fused_decode_one`.

    Built once with torch's C++ extension loader (needs a C++ compiler and ninja; ~45 s, announced by one line
    on stderr) and cached by torch in $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). -march=native:
    the build is named after this CPU, so a cache shared by different machines never runs one machine's binary
    on another.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None
    from torch.utils.cpp_extension import load

    name = kernel_build_name()
    if not kernel_is_built(name):
        print("xlm.fast: compiling the CPU kernels, once per machine (~45 s) ...", file=sys.stderr, flush=True)
    try:
        load(
            name, [str(path) for path in KERNEL_SOURCES], extra_cflags=KERNEL_FLAGS, extra_ldflags=["-fopenmp"],
            is_python_module=False, verbose=False,
        )  # fmt: skip
        _built["gemv"] = True
        return torch.ops.xlm
    except Exception as err:  # no compiler, no ninja, a compiler error: the fallbacks still work
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        warnings.warn(f"xlm.fast: the decoding kernel could not be built ({message}); using F.linear", stacklevel=2)
        return None


def kernel_build_name() -> str:
    """The build's name: a hash of this CPU, the flags and the sources, so that any change rebuilds."""
    cpu = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {_cpu_model()}"
    code = b"".join(path.read_bytes() for path in sorted(KERNEL_DIR.iterdir()) if path.suffix in (".h", ".cpp"))
    recipe = " ".join([cpu, *KERNEL_FLAGS]).encode() + code  # a header or flag edit rebuilds too
    return "xlm_kernels_" + hashlib.sha1(recipe).hexdigest()[:10]


def kernel_is_built(name: str) -> bool:
    """Whether torch's extension cache already holds the build `name` (then loading it takes ~0.1 s)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # where `load` builds; private, hence guarded

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()
    except Exception:  # another torch: say nothing rather than fail
        return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)` on the fastest kernel for its shape: x (..., I), weight (O, I) -> (..., O).

    CPU, fp32/bf16, no autograd: at most GEMV_MAX_ROWS rows -> the decoding kernel (once `gemv_kernel()` has
    built it: `kernels()` and `FastDecoder` do); more rows in fp32, or ONEDNN_BF16_MIN_ROWS and more in bf16 ->
    oneDNN's linear. With autograd: `training_linear`. Everything else -> F.linear.
    """
    if _needs_grad(x, weight):
        return training_linear(x, weight, bias)
    if x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if 0 < rows <= GEMV_MAX_ROWS and _built["gemv"] and weight.is_contiguous():
        y = torch.ops.xlm.gemv(x.reshape(rows, x.size(-1)).contiguous(), weight, bias)  # (rows, O)
        return y.view(*x.shape[:-1], weight.size(0))
    if (x.dtype == torch.float32 and ONEDNN) or (rows >= ONEDNN_BF16_MIN_ROWS and ONEDNN_BF16):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


@torch.library.custom_op("xlm::onednn_linear", mutates_args=())
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's linear on nn.Linear's own weight layout: (..., I) x (O, I) -> (..., O), fp32 or bf16 on CPU
    (bf16: fp32 sums, the bias added before the one rounding).

    An operator of its own so that torch.compile calls it as it is (Inductor only lowers this oneDNN call for
    weights it has repacked itself).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.size(0))


def _needs_grad(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


# --- Training: the products of a step and their gradients ----------------------------------------------------
# A training step is its fp32 products (docs/performance.md, "One training step"): the forward product of every
# linear layer and its two gradient products, grad_x = g @ W and grad_W = g.T @ x. `onednn_linear` is
# differentiable (its backward below), so under `kernels()` each of the three runs on the faster of oneDNN and
# MKL for its shape: oneDNN forward, and as chosen below backward.

# The kernel of each gradient product, "onednn" (the oneDNN matmul, any operand layout) or "mkl" (torch.mm), as
# measured fastest at the model's shapes with 2048 rows (docs/performance.md). grad_x = g @ W, (N, O) x (O, I):
# oneDNN, 1.11-1.14x MKL's speed (0.96x, equal within noise, at 1024 x 1024). grad_W = g.T @ x, (O, N) x (N, I):
# oneDNN reads g.T from a contiguous copy, which pays where O <= I (1.12-1.20x MKL) and not beyond: (4096, 1024)
# 0.85x, the 64,139-row head 0.81x (`grad_weight_kernel`).
GRAD_INPUT_KERNEL = "onednn"


def grad_weight_kernel(out_features: int, in_features: int) -> str:
    """The kernel of grad_W for a weight (out_features, in_features): "onednn" or "mkl" (measured, above)."""
    return "onednn" if out_features <= in_features else "mkl"


def training_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` where autograd needs the result: fp32 on the CPU -> `onednn_linear` (its gradients on oneDNN
    too); under autocast, other dtypes or devices -> F.linear (autocast's bf16 products already run on oneDNN)."""
    fp32 = x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if ONEDNN and fp32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def times_transposed(a: Tensor, b: Tensor, kernel: str, bias: Tensor | None = None) -> Tensor:
    """a (M, K) @ b (N, K).T (+ bias) -> (M, N) on `kernel`: "onednn" (b in nn.Linear's layout, whatever its
    strides; fp32 on the CPU, else F.linear, whose bf16 products are oneDNN's) or "mkl" (torch.mm: fp32 on the
    CPU goes to MKL). Not F.linear for "mkl": under `kernels()` that call would come back to `linear`."""
    if kernel == "mkl":
        return a @ b.t() if bias is None else torch.addmm(bias, a, b.t())
    if ONEDNN and a.device.type == "cpu" and a.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    return F.linear(a, b, bias)


def _save_linear_inputs(ctx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _onednn_linear_backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """grad (..., O) -> (grad_x (..., I), grad_W (O, I), grad_b (O,)): the two products on the kernels chosen
    above, the bias gradient a sum over rows. The same math as F.linear's backward (fp32 sums in another order)."""
    x, weight = ctx.saved_tensors
    g = grad.reshape(-1, grad.size(-1))  # (..., O) -> (N, O)
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = times_transposed(g, weight.t(), GRAD_INPUT_KERNEL).view(x.shape)  # (N, O) x (O, I) -> (..., I)
    if ctx.needs_input_grad[1]:
        rows = x.reshape(-1, x.size(-1))  # (..., I) -> (N, I)
        kernel = grad_weight_kernel(*weight.shape)
        grad_weight = times_transposed(g.t(), rows.t(), kernel)  # (O, N) x (N, I) -> (O, I)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = g.sum(0)  # (O,)
    return grad_x, grad_weight, grad_bias


onednn_linear.register_autograd(_onednn_linear_backward, setup_context=_save_linear_inputs)


# --- Composing the kernels with the plain model ------------------------------------------------------------


class FastKernels(TorchFunctionMode):
    """A torch function mode: every `F.linear` call made under it runs on `linear` (the model is not touched).

    nn.Linear's forward and `XLM.logits` both call `F.linear`, so a forward, a scoring pass or a prefill under
    this mode sends all its matrix products to the faster kernels; every other operation runs as it is.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return linear(*args, **kwargs)
        return func(*args, **kwargs)


def kernels() -> FastKernels:
    """`with xlm.fast.kernels(): ...`: the block's matrix products on the faster kernels (builds them if needed)."""
    gemv_kernel()
    return FastKernels()


class FastDecoder(Decoder):
    """A `generate` decoder: the plain prefill under `kernels()`, and each step in one C++ call
    (`fused_decode_one`, batches of up to FUSED_MAX_ROWS rows), equal to the plain steps within 1e-5.

        xlm.generate(model, ids, langs, max_new_tokens=20, decoder=FastDecoder())

    Builds the kernels if needed (~45 s the first time on a machine, then cached). Steps the fused call cannot
    take (bigger batches, autograd, other dtypes or devices) run `decode_one` under `kernels()`.

    compile_decoding: those bigger batches decode through a torch.compile'd `decode_one` instead: between its 37
    matrix products a step runs ~150 small operations (~3 ms of Python and dispatch eagerly, a few fused loops
    compiled). Dynamic shapes: the first such step compiles (~10-40 s; torch caches the result on disk), then one
    graph serves every step and cache length. Build the model with `attention="reference"` for it
    (`load_pretrained(..., attention="reference")`, as `xlm generate --compile` does): Inductor fuses the plain
    formulation into a few loops over the cached keys, while SDPA stays an opaque call (measured: 0.6-1 ms per
    step less).
    """

    def __init__(self, *, compile_decoding: bool = False):
        gemv_kernel()
        self.fallback: Callable[..., Tensor] = (
            torch.compile(decode_one, dynamic=True) if compile_decoding else decode_one
        )

    def prefill(
        self, model: XLM, input_ids: Tensor, langs: Tensor | None, attention_mask: Tensor, cache: KVCache
    ) -> Tensor:
        with FastKernels():
            return prefill(model, input_ids, langs, attention_mask, cache)

    def step(
        self, model: XLM, token: Tensor, lang: Tensor | None, cache: KVCache, *, slot: int, position: Tensor,
        real: Tensor,
    ) -> Tensor:  # fmt: skip
        return fused_decode_one(
            model, token, lang, cache, slot=slot, position=position, real=real, fallback=self._fallback
        )

    def _fallback(self, *args, **kwargs) -> Tensor:
        with FastKernels():
            return self.fallback(*args, **kwargs)


PAGE = 4096  # bytes: each weight starts on a page of its own
HUGE_PAGE = 2 << 20  # bytes: a transparent huge page (x86-64 Linux); the weights' block starts on one


@torch.no_grad()
def align_weights(model: XLM) -> int:
    """Copy the model's CPU parameters into one block of memory that starts on a 2 MB boundary and is advised
    for transparent huge pages, each tensor on a 4 KB boundary; returns how many moved. Same values.

    A decoding step streams every weight once, and on 4 KB pages that is a TLB miss every 4 KB: 138,000 page
    walks per fp32 step (nested ones in a VM), and the hardware prefetchers stop at each page's end. On 2 MB
    pages the same fused steps took 5-24% less time, taking turns in one process (docs/performance.md: batch 1
    fp32 15.1 -> 11.5 ms, 8 rows bf16 13.5 -> 11.1 ms). It also aligns memory-mapped weights: a safetensors
    file puts tensors wherever its header ends (the xlm-clm-enfr-1024 file written by transformers: 28 bytes
    past a cache line), and half of the decoding kernel's loads then straddle two cache lines (1.02-1.10x the
    weights sweep against 0.98-1.01x). Where there are no transparent huge pages (not Linux, or switched off)
    the block is only aligned. The copy is one read of the weights (0.7 s for fp32); memory-mapped pages are
    released with the last tensor that uses them.
    """
    params = [p for p in model.parameters() if p.device.type == "cpu"]  # (a tied weight once)
    offsets, size = [], 0
    for param in params:
        offsets.append(size)
        size += -(-param.nbytes // PAGE) * PAGE
    block = _huge_page_block(size)
    for param, offset in zip(params, offsets, strict=True):
        param.data = block[offset : offset + param.nbytes].view(param.dtype).view(param.shape).copy_(param.data)
    return len(params)


def _huge_page_block(nbytes: int) -> Tensor:
    """nbytes (uint8) starting on a 2 MB boundary: on Linux, private anonymous memory advised for huge pages
    before its first touch, so that its pages fault in 2 MB at a time."""
    if not (hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE")):
        whole = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)
    else:
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(OSError):  # a kernel without transparent huge pages: 4 KB pages, still aligned
            region.madvise(mmap.MADV_HUGEPAGE)
        whole = torch.frombuffer(region, dtype=torch.uint8)  # (the tensor keeps the mapping alive)
    start = -whole.data_ptr() % HUGE_PAGE
    return whole[start : start + nbytes]


# --- The decoding step in one call ---------------------------------------------------------------------------

FUSED_MAX_ROWS = 16  # the fused step's products tile up to 16 rows (gemv.h); bigger batches: `fallback`


def fused_decode_one(
    model: XLM,
    token: Tensor,
    lang: Tensor | None,
    cache: KVCache,
    *,
    slot: int,
    position: Tensor,
    real: Tensor,
    fallback: Callable[..., Tensor] = decode_one,
) -> Tensor:
    """`decode_one` (xlm/generation.py) in one C++ call, `xlm/csrc/decode_step.cpp`: logits (B, V) in fp32.

    The same arguments and the same cache updates. Between the matrix products, a step's small operations run
    as plain loops instead of ~150 PyTorch calls, which leaves a batch-1 step within a few percent of the time
    it takes to read the weights (docs/performance.md). Logits come out in fp32 whatever the weights' dtype (the
    head sums in fp32; rounding to bf16 would only add ties for the argmax); with bf16 weights the activations
    stay in fp32 between products (each product rounds its input to bf16, as torch's bf16 matmul does), so a
    bf16 step is closer to the fp32 model than the plain bf16 one.

    Runs `fallback` instead where the step does not apply: batches over FUSED_MAX_ROWS rows, autograd or
    training mode, weights that are not contiguous fp32/bf16 CPU tensors, or the kernel not built.
    """
    table = model.lang_embeddings
    weights = _step_weights(model)  # the language table last, if any
    if not _fusable(model, weights, token, cache) or (table is not None and lang is None):  # (decode_one says why)
        return fallback(model, token, lang, cache, slot=slot, position=position, real=real)
    if not 0 <= slot < cache.max_len:
        raise InputError(f"the cache holds {cache.max_len} positions; this call needs {slot + 1}")
    return torch.ops.xlm.decode_step(
        token.long().contiguous(), position.long().contiguous(),
        None if table is None else lang.long().expand_as(token).contiguous(), real.contiguous(), slot,
        cache.valid, cache.k, cache.v, weights[: len(weights) - (table is not None)],
        None if table is None else weights[-1], model.config.n_heads, model.config.layer_norm_eps,
    )  # fmt: skip


def _step_weights(model: XLM) -> list[Tensor]:
    """The parameters one step reads, in decode_step.cpp's order (the checkpoint's, block by block, the output
    bias, then the language table if there is one).

    Which module holds each is looked up once (attribute access on ~100 modules costs ~0.3 ms, 2% of a step);
    the parameters themselves are read from those modules at every call, so one replaced later (e.g. by
    `load_state_dict(..., assign=True)`) is the one used.
    """
    slots = _PARAMETER_SLOTS.get(model)
    if slots is None:
        parts = [model.embeddings, model.position_embeddings, model.layer_norm_emb]
        for block in model.blocks:
            attn, ffn = block.attention, block.ffn
            parts += [attn.q_lin, attn.k_lin, attn.v_lin, attn.out_lin, block.layer_norm1, ffn.lin1, ffn.lin2]
            parts.append(block.layer_norm2)
        slots = [(module, "weight") for module in parts[:2]]
        slots += [(module, name) for module in parts[2:] for name in ("weight", "bias")]
        slots.append((model, "output_bias"))
        if model.lang_embeddings is not None:
            slots.append((model.lang_embeddings, "weight"))
        _PARAMETER_SLOTS[model] = slots
    return [module._parameters[name] for module, name in slots]


_PARAMETER_SLOTS: weakref.WeakKeyDictionary[XLM, list] = weakref.WeakKeyDictionary()  # model -> its step's slots


def _fusable(model: XLM, weights: list[Tensor], token: Tensor, cache: KVCache) -> bool:
    dtype = weights[0].dtype
    return (
        _built["gemv"]
        and token.size(0) <= FUSED_MAX_ROWS
        and not model.training
        and dtype in _KERNEL_DTYPES
        and cache.k[0].dtype == dtype
        and all(t.is_cpu and t.dtype == dtype and t.is_contiguous() for t in weights)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in weights))
    )


# --- Training: the LM head and its cross-entropy in one pass over chunks of positions -------------------------

HEAD_CHUNK = 1024  # positions per chunk: (1024, V) fp32 logits, 263 MB at V = 64,139 (all 2040 of a CLM batch: 523)


class Scratch:
    """Buffers that keep their memory from one call to the next, by name: for the big temporaries of
    `summed_head_cross_entropy` under bf16 autocast.

    There a step makes ~650 MB of them: the embeddings in bf16, each chunk's logits in bf16 and in fp32, the bf16
    product of the embeddings' gradient. Each fresh one costs its page faults (a block this big goes back to the
    system when freed): 0.37 s of a 2.9 s bf16 head on the bench machine (docs/performance.md). With one Scratch
    for a run (the trainer's `--fast` path keeps one) they are allocated once; between steps they stay held.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor: the memory of this name's last one, if it is big enough (else new memory)."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.device != device or buffer.numel() < size:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size].view(shape)


def _take(
    scratch: Scratch | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`scratch.take(...)`, or fresh memory without a scratch."""
    if scratch is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return scratch.take(name, shape, dtype, device)


def summed_head_cross_entropy(
    model: XLM, h: Tensor, targets: Tensor, *, chunk: int = HEAD_CHUNK, scratch: Scratch | None = None
) -> tuple[Tensor, int]:
    """`objectives.summed_cross_entropy(model.logits(h), targets)` without ever holding all the logits.

    h (P, C): the hidden states of the predicted positions; targets (P,) -> (summed loss, a float64 scalar; P).
    The head is ~45% of a CLM step's arithmetic and its logits the step's biggest tensors (P x V fp32: 523 MB for
    a batch of 8 x 256, plus the softmax and its gradient). Here the logits of `chunk` positions at a time give
    their losses and, when autograd needs them, their gradients at once: softmax - one-hot is the gradient of
    the summed loss w.r.t. the logits, and two products turn it into the gradients w.r.t. h and the tied
    embeddings; backward only scales them by the incoming gradient (the loss is a sum). The same math as the
    plain path (fp32 sums in another order). Under bf16 autocast the products run in bf16 as autocast's would
    (the logits rounded to bf16, then the loss in fp32), and the gradients of the chunks add up in fp32; a
    `scratch` keeps the memory of the bf16 path's big temporaries from one call to the next (`Scratch`).
    """
    weight, bias = model.embeddings.weight, model.output_bias
    with_grads = torch.is_grad_enabled() and any(t.requires_grad for t in (h, weight, bias))
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    summed = _HeadCrossEntropy.apply(h, weight, bias, targets, chunk, dtype, with_grads, scratch)
    return summed, targets.numel()


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk: int, dtype: torch.dtype, with_grads: bool, scratch) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            losses, grads = _head_losses_and_grads(h, weight, bias, targets, chunk, dtype, with_grads, scratch)
        ctx.grads = grads
        return losses.double().sum()  # as summed_cross_entropy: fp32 losses, added up in float64

    @staticmethod
    def backward(ctx, grad_summed: Tensor):
        if ctx.grads is None:
            raise RuntimeError("summed_head_cross_entropy: backward through it once, with autograd on in its forward")
        scale = grad_summed.float()  # what the plain path's `.double()` passes back to the fp32 losses
        grad_h, grad_weight, grad_bias = (g.mul_(scale) for g in ctx.grads)
        ctx.grads = None
        return grad_h, grad_weight, grad_bias, None, None, None, None, None


def _head_losses_and_grads(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    chunk: int,
    dtype: torch.dtype,
    with_grads: bool,
    scratch: Scratch | None,
) -> tuple[Tensor, list[Tensor] | None]:
    """Per-position losses (P,) fp32, and the gradients of their sum w.r.t. h (P, C), weight (V, C), bias (V,)."""
    P, (V, C) = h.size(0), weight.shape
    if dtype == torch.float32:
        rows, table, table_bias = h, weight, bias
    else:  # the products' operands in bf16, as autocast would make them
        rows, table_bias = h.to(dtype), bias.to(dtype)
        table = _take(scratch, "table", (V, C), dtype, h.device).copy_(weight)
    losses = torch.empty(P, dtype=torch.float32, device=h.device)
    grads = [torch.empty_like(h, dtype=torch.float32), None, torch.zeros_like(bias, dtype=torch.float32)]
    for start in range(0, P, chunk):
        part, wanted = rows[start : start + chunk], targets[start : start + chunk]  # (c, C), (c,)
        if dtype == torch.float32:
            logits = times_transposed(part, table, "onednn", table_bias)  # (c, V)
        else:  # bf16 logits, then fp32 for the loss
            shape = (len(part), V)
            rounded = torch.addmm(table_bias, part, table.t(), out=_take(scratch, "logits", shape, dtype, h.device))
            logits = _take(scratch, "logits32", shape, torch.float32, h.device).copy_(rounded)
        softmax, losses[start : start + chunk] = _softmax_and_losses(logits, wanted)
        if not with_grads:
            continue
        grad_logits = softmax  # (c, V), in place of the logits
        grad_logits[torch.arange(len(wanted), device=h.device), wanted] -= 1.0  # minus the one-hot
        grads[2].add_(grad_logits.sum(0))
        if dtype == torch.float32:
            grads[0][start : start + chunk] = times_transposed(grad_logits, table.t(), GRAD_INPUT_KERNEL)  # (c, C)
            grads[1] = _add_grad_weight(grads[1], grad_logits, part)
        else:  # in bf16, into the bf16 logits' memory
            grad_logits = rounded.copy_(grad_logits)
            grads[0][start : start + chunk] = grad_logits @ table  # (c, V) x (V, C)
            product = torch.mm(grad_logits.t(), part, out=_take(scratch, "grad_weight", (V, C), dtype, h.device))
            grads[1] = product.float() if grads[1] is None else grads[1].add_(product)
    return losses, grads if with_grads else None


def _softmax_and_losses(logits: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """logits (c, V) fp32, overwritten -> (softmax (c, V) in the same memory, losses -log softmax[wanted] (c,)).

    One exp per logit, every pass in place (a (c, V) chunk is 263 MB: torch.logsumexp and a second exp, with their
    fresh temporaries, took 5x as long). The loss is logsumexp - the target's logit, as F.cross_entropy's.
    """
    picked = logits.gather(1, wanted[:, None]).squeeze(1)  # (c,)
    top = logits.amax(dim=1, keepdim=True)  # (c, 1)
    exps = logits.sub_(top).exp_()  # (c, V)
    total = exps.sum(dim=1, keepdim=True)  # (c, 1)
    losses = (top + total.log()).squeeze(1) - picked
    return exps.div_(total), losses


def _add_grad_weight(total: Tensor | None, grad_logits: Tensor, part: Tensor) -> Tensor:
    """total (V, C) fp32 + grad_logits.T (V, c) @ part (c, C), all fp32: the chunks' sum of the embeddings'
    gradient (the first chunk's product is the sum so far: nothing to zero), on the kernel `grad_weight_kernel`
    picks, added in place."""
    on_mkl = grad_weight_kernel(grad_logits.size(1), part.size(1)) == "mkl"
    if on_mkl and total is not None:
        return total.addmm_(grad_logits.t(), part)
    product = times_transposed(grad_logits.t(), part.t(), "mkl" if on_mkl else "onednn")
    return product if total is None else total.add_(product)


__all__ = [
    "FUSED_MAX_ROWS",
    "GEMV_MAX_ROWS",
    "HEAD_CHUNK",
    "HUGE_PAGE",
    "ONEDNN",
    "ONEDNN_BF16",
    "ONEDNN_BF16_MIN_ROWS",
    "FastDecoder",
    "FastKernels",
    "Scratch",
    "align_weights",
    "fused_decode_one",
    "gemv_kernel",
    "grad_weight_kernel",
    "kernel_build_name",
    "kernel_is_built",
    "kernels",
    "linear",
    "onednn_linear",
    "summed_head_cross_entropy",
    "training_linear",
]
