"""Faster CPU inference, opt-in: the same model and weights, its matrix products sent to better kernels.

    model = xlm.fast.optimize(load_pretrained(path))         # or: xlm generate/score --fast

Nearly all of XLM's inference time is its matrix products (nn.Linear and the tied LM head), and the plain model
(xlm/model.py) runs them all with `F.linear`: MKL for fp32, oneDNN for bf16. On CPUs both leave time on the
table in two regimes that matter here (measurements in docs/performance.md):

- Decoding, 1-2 rows per product: every weight is read once per token, so a step can be no faster than
  streaming the weights from memory. `F.linear` reaches ~30-60% of that speed; `xlm/csrc/gemv.cpp`, a plain
  C++ loop compiled on first use, reaches ~90-100% in fp32 and bf16.
- fp32 with many rows (a forward, scoring, prefill): MKL's fp32 GEMM runs at a fraction of oneDNN's speed on
  AMD CPUs (MKL takes slower code paths on non-Intel CPUs); oneDNN's matmul on the *same* weight tensors,
  `torch.ops.mkldnn._linear_pointwise` (what torch.compile's CPU backend calls), is 1.3-1.8x faster.

No weight is copied, transposed or repacked: `optimize` changes which function multiplies, nothing else, so it
costs no memory. Results equal the plain model's within float rounding (another summation order: ~1e-6
relative, tested at 1e-5 on logits and on generated tokens). Inference only (no autograd through the kernels;
with gradients enabled the plain `F.linear` runs). On CUDA and other devices, or where neither kernel is
available, `linear` is `F.linear`: cuBLAS is already good at this.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlm.model import XLM, attention_reference, attention_sdpa

GEMV_MAX_ROWS = 2  # up to this many rows, the streaming kernel; from 3-4 rows on, oneDNN is as fast (measured)
KERNEL_SOURCE = Path(__file__).parent / "csrc" / "gemv.cpp"
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
# oneDNN's fp32 matmul on plain weights: x86 CPU builds of torch (aarch64 builds use it with ACL).
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_built = {"gemv": False}  # set by gemv_kernel(); `linear` reads it (a plain flag: torch.compile can trace it)


# --- The kernels --------------------------------------------------------------------------------------------


@functools.cache
def gemv_kernel():
    """`torch.ops.xlm`, whose `gemv(x, w, b)` is the compiled `xlm/csrc/gemv.cpp`; None if it cannot be built.

    Built once with torch's C++ extension loader (needs a C++ compiler and ninja; ~30 s) and cached by torch in
    $TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). -march=native: the build is named after this
    CPU, so a cache shared by different machines never runs one machine's binary on another.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None
    from torch.utils.cpp_extension import load

    cpu = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} {_cpu_model()}"
    name = "xlm_gemv_" + hashlib.sha1(cpu.encode()).hexdigest()[:10]
    try:
        load(
            name, [str(KERNEL_SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False,
        )  # fmt: skip
        _built["gemv"] = True
        return torch.ops.xlm
    except Exception as err:  # no compiler, no ninja, a compiler error: the fallbacks still work
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        warnings.warn(f"xlm.fast: the decoding kernel could not be built ({message}); using F.linear", stacklevel=2)
        return None


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

    CPU, fp32/bf16, no autograd: at most GEMV_MAX_ROWS rows -> the streaming kernel (once `gemv_kernel()` has
    built it: `optimize` does); more rows in fp32 -> oneDNN. Everything else -> F.linear.
    """
    if x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES or x.dtype != weight.dtype or _needs_grad(x, weight):
        return F.linear(x, weight, bias)
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if 0 < rows <= GEMV_MAX_ROWS and _built["gemv"] and weight.is_contiguous():
        y = torch.ops.xlm.gemv(x.reshape(rows, x.size(-1)).contiguous(), weight, bias)  # (rows, O)
        return y.view(*x.shape[:-1], weight.size(0))
    if x.dtype == torch.float32 and ONEDNN:
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


@torch.library.custom_op("xlm::onednn_linear", mutates_args=())
def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's matmul on nn.Linear's own weight layout: (..., I) x (O, I) -> (..., O), fp32 on CPU.

    An operator of its own so that torch.compile calls it as it is (Inductor only lowers this oneDNN call for
    weights it has repacked itself).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.size(0))


def _needs_grad(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


# --- The model ----------------------------------------------------------------------------------------------


class FastLinear(nn.Linear):
    """nn.Linear whose product is `xlm.fast.linear`: same parameters, same state dict, another kernel."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def optimize(model: XLM, *, compile_decoding: bool = False) -> XLM:
    """Route every matrix product of `model` (in place) through `linear`; returns the model.

    The blocks' nn.Linear modules become `FastLinear` (a class swap: their parameters stay what they are) and
    the LM head's product (`XLM.linear`) becomes `linear`. Builds the decoding kernel if needed (~30 s the first
    time on a machine, then cached). On a non-CPU model this does nothing and says so.

    compile_decoding: also give `generate` a torch.compile'd decode step (`model.decode_step`), its attention
    in the form the compiler fuses (`attend_fusable`). Between its 37 matrix products a step runs ~150 small
    operations (LayerNorms, attention over the cache, GELU, residuals): ~3 ms of Python and dispatch in eager
    mode, a few fused loops compiled. Dynamic shapes: the first step compiles (~10-40 s; torch caches the
    result on disk), then one graph serves every step and cache length (batches of 1-2 rows and larger ones
    get one graph each).
    """
    device = model.embeddings.weight.device
    if device.type != "cpu":
        warnings.warn(f"xlm.fast: nothing to do on {device.type}: F.linear already uses its BLAS", stacklevel=2)
        return model
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
    model.linear = linear
    gemv_kernel()
    if compile_decoding:
        from xlm.generate import decode_one

        model.decode_step = torch.compile(decode_one, dynamic=True)
        for block in model.blocks:
            block.attention.attend = attend_fusable
    return model


def attend_fusable(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float = 0.0) -> Tensor:
    """`attention_sdpa` when run eagerly; under torch.compile, `attention_reference`, which Inductor fuses.

    The fused SDPA kernel is an opaque call to the compiler, ~0.1 ms per layer per decoding step on CPU (more
    in bf16); the plain formulation compiles into a few loops over the cached keys (measured: -0.6 to -1 ms per
    step). Eagerly, SDPA stays the faster of the two. Shapes as in xlm/model.py.
    """
    if torch.compiler.is_compiling():
        return attention_reference(q, k, v, allowed, dropout_p)
    return attention_sdpa(q, k, v, allowed, dropout_p)


def is_optimized(model: XLM) -> bool:
    """Whether `optimize` has routed this model's products through `linear`."""
    return getattr(model, "linear", None) is linear


__all__ = [
    "GEMV_MAX_ROWS",
    "ONEDNN",
    "FastLinear",
    "attend_fusable",
    "gemv_kernel",
    "is_optimized",
    "linear",
    "onednn_linear",
    "optimize",
]
