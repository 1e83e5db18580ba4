// torch.ops.xlm.gemv(x, w, b) = x @ w.T + b for a few rows of x: the decoding kernel of gemv.h as an operator,
// which xlm/fast.py's `linear` calls for products of 1-16 rows, eagerly and from torch.compile'd code.
//
//   x (M, I) fp32 or bf16, contiguous      w (O, I) same dtype, contiguous      b (O,) same dtype, or None
//   -> y (M, O) in that dtype; products and sums in fp32, rounded once

#include <torch/extension.h>

#include "gemv.h"

namespace {

template <typename W>
void gemv_typed(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                torch::Tensor& y) {
  const int64_t M = x.size(0), I = x.size(1), O = w.size(0);
  const W* bias = b.has_value() ? reinterpret_cast<const W*>(b->data_ptr()) : nullptr;
  W* out = reinterpret_cast<W*>(y.data_ptr());
  xlm::gemv(reinterpret_cast<const W*>(x.data_ptr()), M, I, reinterpret_cast<const W*>(w.data_ptr()), bias, O,
            [&](int64_t m, int64_t o, float v) { xlm::store(v, out + m * O + o); });
}

}  // namespace

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "gemv: x (M, I) and w (O, I) expected");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "gemv: x and w must be contiguous");
  const auto dtype = w.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16, "gemv: fp32 or bf16 only");
  TORCH_CHECK(x.scalar_type() == dtype, "gemv: x and w must have the same dtype");
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0) && b->is_contiguous(), "gemv: b must be (O,), contiguous");
    TORCH_CHECK(b->scalar_type() == dtype, "gemv: b must have w's dtype");
  }
  auto y = torch::empty({x.size(0), w.size(0)}, x.options());
  if (dtype == torch::kFloat) gemv_typed<float>(x, w, b, y);
  else gemv_typed<uint16_t>(x, w, b, y);
  return y;
}

torch::Tensor gemv_meta(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b) {
  return torch::empty({x.size(0), w.size(0)}, x.options());  // shapes only: what torch.compile traces with
}

// torch.ops.xlm.gemv: an operator torch.compile can call from compiled code (xlm/fast.py).
TORCH_LIBRARY_FRAGMENT(xlm, m) { m.def("gemv(Tensor x, Tensor w, Tensor? b) -> Tensor"); }
TORCH_LIBRARY_IMPL(xlm, CPU, m) { m.impl("gemv", &gemv); }
TORCH_LIBRARY_IMPL(xlm, Meta, m) { m.impl("gemv", &gemv_meta); }
