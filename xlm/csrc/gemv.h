// The matrix-vector product of decoding, shared by the `gemv` operator (gemv.cpp) and the fused decoding step
// (decode_step.cpp): y = x @ w.T + b for a few rows of x, at memory speed.
//
// Decoding one token per row multiplies 1..4 activation rows by every weight matrix: 4 bytes (fp32) or 2 (bf16)
// read per multiply-add, so a step costs the time it takes to stream the weights from memory once. BLAS GEMM
// kernels are built for many rows and leave bandwidth unused here (measured in docs/performance.md); this loop
// streams each weight row once, front to back, and keeps the activation rows in L1.
//
//   x (M, I) fp32, contiguous      w (O, I) fp32 or bf16, contiguous (nn.Linear's layout, no repacking)
//   b (O,) w's dtype, or null      finish(m, o, value) receives every x[m] . w[o] + b[o], summed in fp32
//
// Plain C++: `omp simd` lets the compiler vectorize the dot products (built with -O3 -march=native by
// xlm/fast.py); output rows are split across torch's intra-op threads (at::parallel_for).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace xlm {

inline float to_float(float v) { return v; }
inline float to_float(uint16_t bf16) {  // a bf16 is the upper half of an fp32
  uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store(float v, float* p) { *p = v; }
inline void store(float v, uint16_t* p) { *p = c10::BFloat16(v).x; }  // round to nearest even, as torch does

// Dot products of one weight row with MB (1, 2 or 4) rows of x: the weight row is read once for all of them.
// Each row's sum is kept in LANES independent partial sums, added up at the end. fp32 weights: vectors of 8
// (two 256-bit partial sums on x86), which measured 0.99-1.08x the time of torch's own sum over the weights
// on the 37 products of a decoding step, where one 512-bit accumulator (what a plain `omp simd` reduction
// compiles to) took 1.05-1.18x; bf16 weights: vectors of 16, slightly better there (docs/performance.md).
constexpr int LANES = 16;
template <typename W>
constexpr int VECTOR = sizeof(W) == 4 ? 8 : 16;

template <int MB, typename W>
inline void dots(const W* row, const float* x, int64_t I, float* out) {
  float acc[MB][LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= I; i += LANES) {
#pragma omp simd simdlen(VECTOR<W>)
    for (int k = 0; k < LANES; ++k) {
      const float wk = to_float(row[i + k]);
      for (int m = 0; m < MB; ++m) acc[m][k] += wk * x[m * I + i + k];
    }
  }
  for (int m = 0; m < MB; ++m) {
    float sum = 0.f;
    for (int k = 0; k < LANES; ++k) sum += acc[m][k];
    for (int64_t j = i; j < I; ++j) sum += to_float(row[j]) * x[m * I + j];  // the tail, I % LANES values
    out[m] = sum;
  }
}

// finish(m, o, x[m] . w[o] + b[o]) for the weight rows o in [begin, end), each streamed once for all rows of x.
template <typename W, typename Finish>
inline void gemv_rows(const float* x, int64_t M, int64_t I, const W* w, const W* b, int64_t begin, int64_t end,
                      Finish&& finish) {
  float out[4];
  for (int64_t o = begin; o < end; ++o) {
    const W* row = w + o * I;
    const float bias = b ? to_float(b[o]) : 0.f;
    if (M == 1) {  // decoding one row: the case to be fast
      dots<1>(row, x, I, out);
      finish(0, o, out[0] + bias);
      continue;
    }
    for (int64_t m = 0; m < M;) {
      const int64_t left = M - m;
      const int mb = left >= 4 ? 4 : (left >= 2 ? 2 : 1);
      if (mb == 4) dots<4>(row, x + m * I, I, out);
      else if (mb == 2) dots<2>(row, x + m * I, I, out);
      else dots<1>(row, x + m * I, I, out);
      for (int k = 0; k < mb; ++k) finish(m + k, o, out[k] + bias);
      m += mb;
    }
  }
}

// The same for all O rows of w, split across threads.
template <typename W, typename Finish>
inline void gemv(const float* x, int64_t M, int64_t I, const W* w, const W* b, int64_t O, Finish&& finish) {
  at::parallel_for(0, O, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    gemv_rows(x, M, I, w, b, begin, end, finish);
  });
}

}  // namespace xlm
