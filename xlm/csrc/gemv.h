// The matrix products of decoding, shared by the `gemv` operator (gemv.cpp) and the fused decoding step
// (decode_step.cpp): y = x @ w.T + b for 1-16 rows of x, each weight read from memory once.
//
// Decoding one token per row multiplies R activation rows by every weight matrix. At R = 1 that is 4 bytes (fp32)
// or 2 (bf16) read per multiply-add, so a step costs the time it takes to stream the weights from memory once.
// BLAS GEMM kernels are built for many rows and leave bandwidth unused here (measured in docs/performance.md);
// `dots` streams each weight row once, front to back, and keeps the activation rows in L1. With more rows the
// arithmetic grows R-fold for the same bytes, and from 2-3 rows on `tile` (register tiles) takes over.
//
//   x (M, I) w's dtype, contiguous      w (O, I) fp32 or bf16, contiguous (nn.Linear's layout, no repacking)
//   b (O,) w's dtype, or null           finish(m, o, value) receives every x[m] . w[o] + b[o], summed in fp32
//
// bf16 weights multiply a bf16 x, as torch's bf16 matmul does: fp32 activations are rounded to bf16 before the
// product (`product_input` below). That halves the bytes of x each weight row is multiplied with, and x must stay
// in L1 while the weights stream past it: with x in fp32, the FFN's second product (I = 4096: a 16 KB x per 8 KB
// weight row) took 1.25-1.9x the time of torch's sum over the same weights, and 1.05-1.1x with x in bf16.
//
// Plain C++ with the GCC/Clang vector extension, built with -O3 -march=native by xlm/fast.py; output rows are
// split across torch's intra-op threads (at::parallel_for).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

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

// Dot products of one fp32 weight row with MB (1 or 2) rows of x: the weight row is read once for all of
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

// --- Several rows: register tiles ------------------------------------------------------------------------
//
// With R rows of x, each weight read from memory feeds R multiply-adds, and from 2-3 rows on the loop above runs
// out of arithmetic before memory: it makes one multiply-add per vector of x loaded (its only reuse is the weight
// vector), on 8-lane vectors. A tile keeps NW weight rows x MR rows of x of accumulators in 512-bit registers
// (4 x 4: 16 of the 32), so each vector loaded feeds 4 multiply-adds. A block of NW weight rows is read from
// memory by the first group of rows of x and from L1/L2 by the later groups (4 fp32 rows of I = 1024: 16 KB).
// Meanwhile every group fetches its share of the next block into L2, spread over its loop (`Fetch`): the
// hardware prefetchers fall behind once a loop does more arithmetic than reading, and when the first group alone
// fetched the next block, memory sat idle while the others ran. Products alone, full size, same process, against
// the weights sweep: 8 rows fp32 1.19-1.28x, bf16 1.13-1.19x with the shares; 1.41-1.50x and 1.75-1.81x with the
// first group fetching into L1 (docs/performance.md). On weights in cache the tiles reach 77-87% of the FMA peak
// at I = 1024, but only ~47% at I = 4096 (the FFN's second product), for a reason not found yet.

constexpr int TL = 16;  // fp32 lanes of a tile's vectors: one 512-bit register
typedef float floats16 __attribute__((vector_size(4 * TL)));
typedef uint32_t words16 __attribute__((vector_size(4 * TL)));

// The sums of the lanes of 16 vectors, as one vector: lane k sums v[k]. Four rounds fold pairs of vectors, each
// lane of a round's result adding two partial sums of one vector (8 + 4 + 2 + 1 vector additions in all). Summing
// each vector on its own took 4 dependent rounds per vector, which GCC compiled to scalar loops through memory:
// as long as the multiply-adds of a 2 x 8 tile at I = 1024.
#if __has_builtin(__builtin_shufflevector)
constexpr int fold_index(int width, int lane, int half) {  // lanes come in groups of 2 width: one per vector
  const int groups = TL / (2 * width), group = lane / width;
  return (group < groups ? 0 : TL) + group % groups * 2 * width + half + lane % width;
}

template <int width, int... lane>
inline floats16 fold(floats16 a, floats16 b, std::integer_sequence<int, lane...>) {
  return __builtin_shufflevector(a, b, fold_index(width, lane, 0)...) +
         __builtin_shufflevector(a, b, fold_index(width, lane, width)...);
}

template <int width>
inline floats16 fold(floats16 a, floats16 b) {  // a's groups of 2 width, then b's -> groups of width
  return fold<width>(a, b, std::make_integer_sequence<int, TL>());
}

inline floats16 sum_lanes(const floats16 (&v)[TL]) {
  floats16 eights[8], fours[4], twos[2];
  for (int k = 0; k < 8; ++k) eights[k] = fold<8>(v[2 * k], v[2 * k + 1]);
  for (int k = 0; k < 4; ++k) fours[k] = fold<4>(eights[2 * k], eights[2 * k + 1]);
  for (int k = 0; k < 2; ++k) twos[k] = fold<2>(fours[2 * k], fours[2 * k + 1]);
  return fold<1>(twos[0], twos[1]);
}
#else  // GCC before 12: one vector at a time
inline floats16 sum_lanes(const floats16 (&v)[TL]) {
  float sums[TL] = {};
  for (int k = 0; k < TL; ++k)
    for (int lane = 0; lane < TL; ++lane) sums[k] += v[k][lane];
  return load<floats16>(sums);
}
#endif

// acc + w * x lane by lane: fp32, 16 values per vector.
inline floats16 multiply_add(floats16 acc, floats16 w, floats16 x) { return acc + w * x; }

// bf16, 32 values per vector (16 words of two): each lane adds the products of its two pairs. AVX512-BF16's
// vdpbf16ps does it in one instruction (exact products, fp32 sums, as the shift-and-mask version below).
inline floats16 multiply_add(floats16 acc, words16 w, words16 x) {
#ifdef __AVX512BF16__
  return (floats16)_mm512_dpbf16_ps((__m512)acc, (__m512bh)w, (__m512bh)x);
#else
  acc += (floats16)(w << 16) * (floats16)(x << 16);
  return acc + (floats16)(w & 0xffff0000u) * (floats16)(x & 0xffff0000u);
#endif
}

template <typename W>
struct Wide;  // a tile's vector of W values
template <>
struct Wide<float> {
  using type = floats16;
  static constexpr int values = TL;
};
template <>
struct Wide<uint16_t> {
  using type = words16;
  static constexpr int values = 2 * TL;
};

// v, from a register: an empty instruction that takes and gives it there. Without it GCC folds the load of a
// vector of x into each of the NW multiply-adds that use it, NW loads where one does.
template <typename V>
inline V in_register(V v) {
#if defined(__x86_64__) && defined(__AVX512F__)  // (a 512-bit vector fits one register only with AVX-512)
  asm("" : "+v"(v));
#endif
  return v;
}

// A share of the next block of weight rows to fetch into L2 while a tile runs, spread evenly over its loop:
// `bytes_per_step` from `next` at each step, up to `end`. Every group of rows of x takes a share, so the memory
// reads run all through the block.
struct Fetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t bytes_per_step = 0;

  void step() {
    for (const char* stop = std::min(end, next + bytes_per_step); next < stop; next += 64)
      __builtin_prefetch(next, 0, 2);  // a cache line, to L2: read by the tiles of the next block
  }
};

// out[n][m] = w[n] . x[m] for NW weight rows and MR rows of x, both I values apart, fetching `fetch` meanwhile.
template <int NW, int MR, typename W>
inline void tile(const W* w, const W* x, int64_t I, float (&out)[NW][MR], Fetch fetch) {
  using V = typename Wide<W>::type;
  constexpr int step = Wide<W>::values, tiles = (NW * MR + TL - 1) / TL;
  floats16 acc[tiles * TL] = {};  // acc[n * MR + m], padded to whole groups of 16 for sum_lanes
  int64_t i = 0;
  for (; i + step <= I; i += step) {
    V wv[NW];
    for (int n = 0; n < NW; ++n) wv[n] = load<V>(w + n * I + i);
    fetch.step();
    for (int m = 0; m < MR; ++m) {
      const V xv = in_register(load<V>(x + m * I + i));
      for (int n = 0; n < NW; ++n) acc[n * MR + m] = multiply_add(acc[n * MR + m], wv[n], xv);
    }
  }
  float sums[tiles * TL];
  for (int t = 0; t < tiles; ++t) {
    const floats16 tile_sums = sum_lanes(reinterpret_cast<const floats16(&)[TL]>(acc[t * TL]));
    std::memcpy(sums + t * TL, &tile_sums, sizeof tile_sums);
  }
  for (int n = 0; n < NW; ++n)
    for (int m = 0; m < MR; ++m) {
      float sum = sums[n * MR + m];
      for (int64_t j = i; j < I; ++j) sum += to_float(w[n * I + j]) * to_float(x[m * I + j]);  // the tail
      out[n][m] = sum;
    }
}

// The block of NW weight rows from o times every row of x, in groups of 4 rows of x, then 2, then 1; `next`
// (or null): the next block, which the groups fetch in equal shares. The first group reads the block from memory,
// the others from cache.
template <int NW, typename W, typename Finish>
inline void tiles(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t o, Finish& finish,
                  const W* next) {
  const int64_t groups = M / 4 + M % 4 / 2 + M % 2;
  const int64_t block_bytes = next ? NW * I * int64_t(sizeof(W)) : 0, steps = I / Wide<W>::values;
  const char* fetched = reinterpret_cast<const char*>(next);
  int64_t m = 0, group = 0;
  auto rows = [&](auto rows_per_group) {
    constexpr int MR = decltype(rows_per_group)::value;
    for (; m + MR <= M; m += MR, ++group) {
      Fetch share{fetched + block_bytes * group / groups, fetched + block_bytes * (group + 1) / groups};
      share.bytes_per_step = steps ? (share.end - share.next + steps - 1) / steps : 0;
      float out[NW][MR];
      tile<NW, MR>(w + o * I, x + m * I, I, out, share);
      for (int n = 0; n < NW; ++n)
        for (int k = 0; k < MR; ++k) finish(m + k, o + n, out[n][k] + (b ? to_float(b[o + n]) : 0.f));
    }
  };
  rows(std::integral_constant<int, 4>());
  rows(std::integral_constant<int, 2>());
  rows(std::integral_constant<int, 1>());
}

// The weight rows o in [begin, end) in blocks of NW, each block times every row of x.
template <int NW, typename W, typename Finish>
inline void tiled_rows(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t begin, int64_t end,
                       Finish& finish) {
  int64_t o = begin;
  for (; o + NW <= end; o += NW) {
    const W* next = o + 2 * NW <= end ? w + (o + NW) * I : nullptr;  // fetched while this block runs
    tiles<NW>(x, M, I, w, b, o, finish, next);
  }
  for (; o < end; ++o) tiles<1>(x, M, I, w, b, o, finish, static_cast<const W*>(nullptr));
}

// Up to this many rows of x, `dots` (memory-bound: each weight is read once for all rows anyway); more: tiles.
// Products alone, the 37 of a step (docs/performance.md): fp32 2 rows 0.98-1.06x the weights sweep in tiles,
// 1.06-1.15x with `dots`; bf16 2 rows 1.02-1.20x with `dots`, 1.05-1.24x in tiles; bf16 3 rows 1.43-2.03x with
// `dots`, 1.13-1.38x in tiles.
template <typename W>
constexpr int64_t streamed_max_rows = 1;
template <>
constexpr int64_t streamed_max_rows<uint16_t> = 2;
constexpr int TILE_WEIGHT_ROWS = 4;  // NW; against 1 x 8, 2 x 4, 2 x 8, 3 x 8, 4 x 6: docs/performance.md

// finish(m, o, x[m] . w[o] + b[o]) for the weight rows o in [begin, end), each streamed once for all rows of x.
template <typename W, typename Finish>
inline void gemv_rows(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t begin, int64_t end,
                      Finish&& finish) {
  static_assert(streamed_max_rows<W> <= 2, "the streaming loop below takes 1 or 2 rows");
  if (M > streamed_max_rows<W>) return tiled_rows<TILE_WEIGHT_ROWS>(x, M, I, w, b, begin, end, finish);
  float out[2];
  for (int64_t o = begin; o < end; ++o) {
    const W* row = w + o * I;
    const float bias = b ? to_float(b[o]) : 0.f;
    if (M == 1) dots<1>(row, x, I, out);  // decoding one row: the case to be fast
    else dots<2>(row, x, I, out);
    for (int m = 0; m < M; ++m) finish(m, o, out[m] + bias);
  }
}

// The same for all O rows of w, split across threads.
template <typename W, typename Finish>
inline void gemv(const W* x, int64_t M, int64_t I, const W* w, const W* b, int64_t O, Finish&& finish) {
  at::parallel_for(0, O, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    gemv_rows(x, M, I, w, b, begin, end, finish);
  });
}

// x (n fp32 values) as the products with weights of type W take it: fp32 as it is; for bf16 weights rounded to
// bf16 into `buffer`, as torch's bf16 matmul rounds its fp32 input. One input often feeds several products (q, k
// and v): it is rounded once.
inline const float* product_input(const float* x, int64_t, std::vector<float>&) { return x; }
inline const uint16_t* product_input(const float* x, int64_t n, std::vector<uint16_t>& buffer) {
  buffer.resize(n);
  for (int64_t i = 0; i < n; ++i) store(x[i], &buffer[i]);
  return buffer.data();
}

}  // namespace xlm
