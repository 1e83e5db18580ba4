// The matrix-vector product of decoding, shared by the `gemv` operator (gemv.cpp) and the fused decoding step
// (decode_step.cpp): y = x @ w.T + b for a few rows of x, at memory speed.
//
// Decoding one token per row multiplies 1..4 activation rows by every weight matrix: 4 bytes (fp32) or 2 (bf16)
// read per multiply-add, so a step costs the time it takes to stream the weights from memory once. BLAS GEMM
// kernels are built for many rows and leave bandwidth unused here (measured in docs/performance.md); this loop
// streams each weight row once, front to back, and keeps the activation rows in L1.
//
//   x (M, I) w's dtype, contiguous      w (O, I) fp32 or bf16, contiguous (nn.Linear's layout, no repacking)
//   b (O,) w's dtype, or null           finish(m, o, value) receives every x[m] . w[o] + b[o], summed in fp32
//
// bf16 weights multiply a bf16 x, as torch's bf16 matmul does: fp32 activations are rounded once per product
// (`gemv` below). That halves the bytes of x each weight row is multiplied with, and x must stay in L1 while the
// weights stream past it: with x in fp32, the FFN's second product (I = 4096: a 16 KB x per 8 KB weight row)
// took 1.25-1.9x the time of torch's sum over the same weights, and 1.05-1.1x with x in bf16.
//
// Plain C++ with the GCC/Clang vector extension, built with -O3 -march=native by xlm/fast.py; output rows are
// split across torch's intra-op threads (at::parallel_for).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <vector>

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

// Vectors of VL floats: `+` and `*` act lane by lane and compile to fused multiply-adds (-ffp-contract=fast); a
// cast between two such types reinterprets the bits. 8 lanes (256 bits): on the 37 products of a decoding step,
// 16 lanes (one 512-bit register) ran 5-20% slower from memory, although faster on weights already in cache.
constexpr int VL = 8;
typedef float floats __attribute__((vector_size(4 * VL)));
typedef uint32_t words __attribute__((vector_size(4 * VL)));

template <typename V, typename T>
inline V load(const T* p) {  // one vector from p, any alignment
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float sum_lanes(floats v) {  // a tree: log2(VL) vector additions, not VL - 1 dependent ones
  float lane[VL];
  std::memcpy(lane, &v, sizeof lane);
  for (int width = VL / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) lane[k] += lane[k + width];
  return lane[0];
}

// A hint to fetch the weights 256 bytes ahead into L1 only (non-temporal: they are read once). The hardware
// prefetchers already stream them from memory; the hint made the products 2-4% faster, 1 KB ahead no faster.
constexpr int AHEAD = 256;
inline void prefetch_once(const void* p) { __builtin_prefetch(static_cast<const char*>(p) + AHEAD, 0, 0); }

// Dot products of one fp32 weight row with MB (1, 2 or 4) rows of x: the weight row is read once for all of
// them. Each row keeps two partial sums, so two multiply-adds per row are in flight, not one waiting on the last.
template <int MB>
inline void dots(const float* row, const float* x, int64_t I, float* out) {
  floats acc[MB][2] = {};
  int64_t i = 0;
  for (; i + 2 * VL <= I; i += 2 * VL) {
    prefetch_once(row + i);
    const floats w0 = load<floats>(row + i), w1 = load<floats>(row + i + VL);
    for (int m = 0; m < MB; ++m) {
      acc[m][0] += w0 * load<floats>(x + m * I + i);
      acc[m][1] += w1 * load<floats>(x + m * I + i + VL);
    }
  }
  for (int m = 0; m < MB; ++m) {
    float sum = sum_lanes(acc[m][0] + acc[m][1]);
    for (int64_t j = i; j < I; ++j) sum += row[j] * x[m * I + j];  // the tail, I % (2 VL) values
    out[m] = sum;
  }
}

// The same in bf16, read as 32-bit words: a word holds two neighbours, v[2j] in its low half and v[2j+1] in its
// high half, and each becomes an fp32 with one shift or one mask. Products and sums are fp32 (exact products:
// 8-bit by 8-bit significands). Widening each bf16 into its own 32-bit lane instead moves data across vector
// lanes, and ran at ~25 GB/s per core on weights already in cache.
template <int MB>
inline void dots(const uint16_t* row, const uint16_t* x, int64_t I, float* out) {
  floats even[MB] = {}, odd[MB] = {};
  int64_t i = 0;
  for (; i + 2 * VL <= I; i += 2 * VL) {
    prefetch_once(row + i);
    const words w = load<words>(row + i);  // 2 VL bf16 weights
    const floats w_even = (floats)(w << 16), w_odd = (floats)(w & 0xffff0000u);
    for (int m = 0; m < MB; ++m) {
      const words v = load<words>(x + m * I + i);
      even[m] += w_even * (floats)(v << 16);
      odd[m] += w_odd * (floats)(v & 0xffff0000u);
    }
  }
  for (int m = 0; m < MB; ++m) {
    float sum = sum_lanes(even[m] + odd[m]);
    for (int64_t j = i; j < I; ++j) sum += to_float(row[j]) * to_float(x[m * I + j]);  // the tail
    out[m] = sum;
  }
}

// finish(m, o, x[m] . w[o] + b[o]) for the weight rows o in [begin, end), each streamed once for all rows of x.
template <typename W, typename Finish>
inline void gemv_rows(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t begin, int64_t end,
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
inline void gemv(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t O, Finish&& finish) {
  at::parallel_for(0, O, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    gemv_rows(x, M, I, w, b, begin, end, finish);
  });
}

// fp32 activations times bf16 weights: x rounded to bf16 once (M * I values), then as above.
template <typename Finish>
inline void gemv(const float* x, int64_t M, int64_t I, const uint16_t* w, const uint16_t* b, int64_t O,
                 Finish&& finish) {
  std::vector<uint16_t> rounded(M * I);
  for (int64_t i = 0; i < M * I; ++i) store(x[i], &rounded[i]);
  gemv(rounded.data(), M, I, w, b, O, finish);
}

}  // namespace xlm
