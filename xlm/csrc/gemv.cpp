// y = x @ w.T + b for a few rows of x: the matrix-vector product of decoding, at memory speed.
//
// Decoding one token per row multiplies 1..2 activation rows by every weight matrix: 4 bytes (fp32) or 2 (bf16)
// read per multiply-add, so a step costs the time it takes to stream the weights from memory once. BLAS GEMM
// kernels are built for many rows and leave bandwidth unused here (measured in docs/performance.md); this loop
// streams each weight row once, front to back, and keeps the activation rows in L1.
//
//   x (M, I) fp32 or bf16, contiguous      w (O, I) same dtype, contiguous (nn.Linear's layout, no repacking)
//   b (O,) same dtype, or None             -> y (M, O) in that dtype; products and sums in fp32, rounded once
//
// Plain C++: `omp simd` lets the compiler vectorize the dot products (built with -O3 -march=native by
// xlm/fast.py); output rows are split across torch's intra-op threads (at::parallel_for).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

inline float to_float(float v) { return v; }
inline float to_float(uint16_t bf16) {  // a bf16 is the upper half of an fp32
  uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Dot products of one weight row with MB (1, 2 or 4) rows of x: the weight row is read once for all of them.
template <int MB, typename W>
inline void dots(const W* row, const float* x, int64_t I, float* out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < I; ++i) {
    float wi = to_float(row[i]);
    a0 += wi * x[i];
    if (MB > 1) a1 += wi * x[I + i];
    if (MB > 2) a2 += wi * x[2 * I + i];
    if (MB > 3) a3 += wi * x[3 * I + i];
  }
  const float acc[4] = {a0, a1, a2, a3};
  for (int m = 0; m < MB; ++m) out[m] = acc[m];
}

inline void store(float v, float* p) { *p = v; }
inline void store(float v, uint16_t* p) { *p = c10::BFloat16(v).x; }  // round to nearest even, as torch does

// y (M, O) = x (M, I, fp32) @ w.T + b: rows of w split across threads, each streamed once for all rows of x.
template <typename W>
void gemv_rows(const float* x, const W* w, const W* b, W* y, int64_t M, int64_t O, int64_t I) {
  at::parallel_for(0, O, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    float out[4];
    for (int64_t o = begin; o < end; ++o) {
      const W* row = w + o * I;
      const float bias = b ? to_float(b[o]) : 0.f;
      for (int64_t m = 0; m < M;) {
        const int64_t left = M - m;
        const int mb = left >= 4 ? 4 : (left >= 2 ? 2 : 1);
        if (mb == 4) dots<4>(row, x + m * I, I, out);
        else if (mb == 2) dots<2>(row, x + m * I, I, out);
        else dots<1>(row, x + m * I, I, out);
        for (int k = 0; k < mb; ++k) store(out[k] + bias, y + (m + k) * O + o);
        m += mb;
      }
    }
  });
}

// x in fp32 for the inner loops: x itself, or a converted copy (a few KB, converted once, not per weight row).
template <typename W>
void gemv_typed(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b, torch::Tensor& y) {
  const int64_t M = x.size(0), I = x.size(1), O = w.size(0);
  const W* in = reinterpret_cast<const W*>(x.data_ptr());
  std::vector<float> converted;
  const float* x32 = reinterpret_cast<const float*>(in);
  if (!std::is_same<W, float>::value) {
    converted.resize(M * I);
    for (int64_t i = 0; i < M * I; ++i) converted[i] = to_float(in[i]);
    x32 = converted.data();
  }
  const W* bias = b.has_value() ? reinterpret_cast<const W*>(b->data_ptr()) : nullptr;
  gemv_rows(x32, reinterpret_cast<const W*>(w.data_ptr()), bias, reinterpret_cast<W*>(y.data_ptr()), M, O, I);
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
TORCH_LIBRARY(xlm, m) { m.def("gemv(Tensor x, Tensor w, Tensor? b) -> Tensor"); }
TORCH_LIBRARY_IMPL(xlm, CPU, m) { m.impl("gemv", &gemv); }
TORCH_LIBRARY_IMPL(xlm, Meta, m) { m.impl("gemv", &gemv_meta); }
