// One decoding step of XLM in one call: what xlm/generation.py's `decode_one` computes (embeddings, every block
// over the KV cache, the LM head, for one new token per row), written out over the model's own tensors.
//
// Why: at batch 1 a step's 37 matrix products read every weight once, and that is the bound. What lies between
// them is small (LayerNorms, attention over the cache, GELU, residuals and cache writes on vectors of C = 1024):
// as PyTorch operations it costs ~3 ms of Python and dispatch per step (1.5-2 ms compiled), 10-20% of a step.
// Here those are loops of microseconds; GELU and the residual additions run inside the products' own loops.
// Batches of up to 16 rows (FUSED_MAX_ROWS in xlm/fast.py) take the same path: the products multiply every row by
// each weight they read (gemv.h's tiles), the rest runs row by row, attention in parallel over rows and heads.
// This is a second implementation of XLM's forward pass (for one new token per row). xlm/model.py is the
// specification; tests/test_fast.py holds this step to it:
// test_fused_step_equals_decode_one_and_updates_the_cache_alike (logits within 1e-5 in fp32, the same cache writes)
// and test_fused_generation_gives_the_plain_tokens_and_never_falls_back.
// A change to the model's computation must be made here too, or those tests fail.
//
// Shapes (B rows, C width, H heads, D = C / H, F FFN width, S_max cache slots, V vocabulary, L layers):
//   token, position (B,) int64; lang (B,) int64 or None; real (B,) bool, false for finished rows (fed <pad>)
//   slot: the cache slot of this token; valid (B, S_max) bool and k_cache[l], v_cache[l] (B, H, S_max, D):
//     the KVCache, updated in place (slot `slot` of every layer, and valid[:, slot] = real)
//   weights: embeddings (V, C), position_embeddings, layer_norm_emb weight and bias, then per block the 16
//     tensors of BlockTensor below, then output_bias (V,); lang_table (n_langs, C) or None
//   -> logits (B, V) in fp32. Weights and cache in fp32 or bf16 (all alike); activations in fp32 throughout,
//   except that with bf16 weights each product takes its input rounded to bf16, as torch's bf16 matmul does.

#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <vector>

#include "gemv.h"

namespace {

using xlm::to_float;

// A block's tensors in `weights`, in the order xlm/fast.py lists them (the checkpoint's names).
enum BlockTensor {
  Q_W, Q_B, K_W, K_B, V_W, V_B, OUT_W, OUT_B,  // attention.{q,k,v,out}_lin
  LN1_W, LN1_B, LIN1_W, LIN1_B, LIN2_W, LIN2_B, LN2_W, LN2_B,  // layer_norm1, ffn.lin1, ffn.lin2, layer_norm2
  BLOCK_TENSORS
};
constexpr int64_t FIRST_BLOCK = 4;  // embeddings, position_embeddings, layer_norm_emb.weight, layer_norm_emb.bias

template <typename T>
const T* data(const torch::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }

// One row of C values in place: (x - mean) / sqrt(var + eps) * w + b, nn.LayerNorm's biased variance.
template <typename W>
void layer_norm(float* x, const W* w, const W* b, int64_t C, float eps) {
  double sum = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < C; ++i) sum += x[i];
  const float mean = float(sum / C);
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < C; ++i) squares += double(x[i] - mean) * double(x[i] - mean);
  const float rstd = 1.f / std::sqrt(float(squares / C) + eps);
  for (int64_t i = 0; i < C; ++i) x[i] = (x[i] - mean) * rstd * to_float(w[i]) + to_float(b[i]);
}

inline float gelu(float v) { return 0.5f * v * (1.f + std::erf(v * float(M_SQRT1_2))); }  // exact, as F.gelu

// One head of one row: q (D,) attends to the cached keys k, v (S_max, D) of slots 0..slot, the slot itself and
// the earlier slots that hold real tokens (`attention_allowed` in xlm/model.py). q scaled before the product,
// softmax in fp32 (`attention_reference`). out (D,).
template <typename W>
void attend(const float* q, const W* k, const W* v, const bool* valid, int64_t slot, int64_t D, float* out) {
  const float scale = float(std::sqrt(double(D)));
  std::vector<float> scaled(D), weight(slot + 1);
  for (int64_t d = 0; d < D; ++d) scaled[d] = q[d] / scale;
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s <= slot; ++s) {
    if (!valid[s] && s != slot) {
      weight[s] = -std::numeric_limits<float>::infinity();
      continue;
    }
    float score = 0.f;
#pragma omp simd reduction(+ : score)
    for (int64_t d = 0; d < D; ++d) score += scaled[d] * to_float(k[s * D + d]);
    weight[s] = score;
    top = std::max(top, score);
  }
  float total = 0.f;
  for (int64_t s = 0; s <= slot; ++s) total += weight[s] = std::exp(weight[s] - top);
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t s = 0; s <= slot; ++s) {
    const float p = weight[s] / total;
    if (p == 0.f) continue;  // a masked slot
    for (int64_t d = 0; d < D; ++d) out[d] += p * to_float(v[s * D + d]);
  }
}

struct Step {
  int64_t B, C, H, D, F, S_max, slot;
  float eps;
  const bool* real;
};

// One post-LN block on x (B, C) in place: x = LN1(x + Attn(x)); x = LN2(x + FFN(x)) * keep.
template <typename W>
void block(const Step& s, const torch::Tensor* t, float* x, W* k_cache, W* v_cache, const bool* valid) {
  const int64_t B = s.B, C = s.C, D = s.D, S_max = s.S_max;
  std::vector<float> q(B * C), k(B * C), v(B * C), heads(B * C), hidden(B * s.F);
  std::vector<W> rounded;  // with bf16 weights: each product's input rounded to bf16 (xlm::product_input)
  auto into = [C](float* y) { return [y, C](int64_t m, int64_t o, float value) { y[m * C + o] = value; }; };
  const W* in = xlm::product_input(x, B * C, rounded);  // one input for the three products
  xlm::gemv(in, B, C, data<W>(t[Q_W]), data<W>(t[Q_B]), C, into(q.data()));
  xlm::gemv(in, B, C, data<W>(t[K_W]), data<W>(t[K_B]), C, into(k.data()));
  xlm::gemv(in, B, C, data<W>(t[V_W]), data<W>(t[V_B]), C, into(v.data()));
  at::parallel_for(0, B * s.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {  // row b, head h: q[b, h*D:(h+1)*D], cache[b, h] (S_max, D)
      const int64_t b = bh / s.H, h = bh % s.H, head = b * C + h * D;
      W* k_head = k_cache + bh * S_max * D;
      W* v_head = v_cache + bh * S_max * D;
      for (int64_t d = 0; d < D; ++d) {
        xlm::store(k[head + d], k_head + s.slot * D + d);
        xlm::store(v[head + d], v_head + s.slot * D + d);
      }
      attend(q.data() + head, k_head, v_head, valid + b * S_max, s.slot, D, heads.data() + head);
    }
  });
  auto add_to_x = [x, C](int64_t m, int64_t o, float value) { x[m * C + o] += value; };  // the residual
  xlm::gemv(xlm::product_input(heads.data(), B * C, rounded), B, C, data<W>(t[OUT_W]), data<W>(t[OUT_B]), C,
            add_to_x);
  for (int64_t b = 0; b < B; ++b) layer_norm(x + b * C, data<W>(t[LN1_W]), data<W>(t[LN1_B]), C, s.eps);
  float* h = hidden.data();
  const int64_t F = s.F;
  xlm::gemv(xlm::product_input(x, B * C, rounded), B, C, data<W>(t[LIN1_W]), data<W>(t[LIN1_B]), F,
            [h, F](int64_t m, int64_t o, float value) { h[m * F + o] = gelu(value); });
  xlm::gemv(xlm::product_input(h, B * F, rounded), B, F, data<W>(t[LIN2_W]), data<W>(t[LIN2_B]), C, add_to_x);
  for (int64_t b = 0; b < B; ++b) {
    layer_norm(x + b * C, data<W>(t[LN2_W]), data<W>(t[LN2_B]), C, s.eps);
    if (!s.real[b]) std::fill(x + b * C, x + (b + 1) * C, 0.f);  // padding is zeroed after every block
  }
}

template <typename W>
torch::Tensor step(const Step& s, const int64_t* token, const int64_t* position, const int64_t* lang,
                   const torch::TensorList weights, const W* lang_table, bool* valid,
                   const torch::TensorList k_cache, const torch::TensorList v_cache) {
  const int64_t B = s.B, C = s.C;
  const W* words = data<W>(weights[0]);
  const W* positions = data<W>(weights[1]);
  std::vector<float> x(B * C);
  for (int64_t b = 0; b < B; ++b) {  // word + position (+ language) embedding, LayerNorm, padding zeroed
    float* row = x.data() + b * C;
    for (int64_t c = 0; c < C; ++c) {
      row[c] = to_float(words[token[b] * C + c]) + to_float(positions[position[b] * C + c]);
      if (lang_table) row[c] += to_float(lang_table[lang[b] * C + c]);
    }
    layer_norm(row, data<W>(weights[2]), data<W>(weights[3]), C, s.eps);
    if (!s.real[b]) std::fill(row, row + C, 0.f);
    valid[b * s.S_max + s.slot] = s.real[b];  // KVCache.record: this slot is real or padding
  }
  for (size_t l = 0; l < k_cache.size(); ++l) {
    W* k = reinterpret_cast<W*>(k_cache[l].data_ptr());
    W* v = reinterpret_cast<W*>(v_cache[l].data_ptr());
    block<W>(s, &weights[FIRST_BLOCK + l * BLOCK_TENSORS], x.data(), k, v, valid);
  }
  const int64_t V = weights[0].size(0);
  auto logits = torch::empty({B, V}, torch::kFloat);
  float* out = logits.data_ptr<float>();
  std::vector<W> rounded;
  xlm::gemv(xlm::product_input(x.data(), B * C, rounded), B, C, words, data<W>(weights[weights.size() - 1]), V,
            [out, V](int64_t m, int64_t o, float value) { out[m * V + o] = value; });  // tied head + its bias
  return logits;
}

void check_ids(const torch::Tensor& ids, int64_t B, int64_t limit, const char* what) {
  TORCH_CHECK(ids.scalar_type() == torch::kLong && ids.dim() == 1 && ids.size(0) == B && ids.is_contiguous(),
              "decode_step: ", what, " must be (B,) int64, contiguous");
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(0 <= p[b] && p[b] < limit, "decode_step: ", what, " out of range");
}

}  // namespace

torch::Tensor decode_step(const torch::Tensor& token, const torch::Tensor& position,
                          const c10::optional<torch::Tensor>& lang, const torch::Tensor& real, int64_t slot,
                          torch::Tensor valid, torch::TensorList k_cache, torch::TensorList v_cache,
                          torch::TensorList weights, const c10::optional<torch::Tensor>& lang_table,
                          int64_t n_heads, double eps) {
  const int64_t L = k_cache.size(), B = token.size(0);
  TORCH_CHECK(L > 0 && v_cache.size() == size_t(L) && weights.size() == size_t(FIRST_BLOCK + L * BLOCK_TENSORS + 1),
              "decode_step: expected L caches of each kind and 4 + 16 L + 1 weight tensors");
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16, "decode_step: fp32 or bf16 weights only");
  for (const auto& t : weights)
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(),
                "decode_step: the weights must be contiguous CPU tensors of one dtype");
  const int64_t V = weights[0].size(0), C = weights[0].size(1), S_max = valid.size(1);
  TORCH_CHECK(n_heads > 0 && C % n_heads == 0, "decode_step: n_heads must divide the width");
  TORCH_CHECK(valid.scalar_type() == torch::kBool && valid.dim() == 2 && valid.size(0) == B && valid.is_contiguous(),
              "decode_step: valid must be (B, S_max) bool, contiguous");
  TORCH_CHECK(0 <= slot && slot < S_max, "decode_step: slot ", slot, " is not in the cache's 0..", S_max - 1);
  for (int64_t l = 0; l < L; ++l)
    for (const auto& cache : {k_cache[l], v_cache[l]})
      TORCH_CHECK(cache.scalar_type() == dtype && cache.is_contiguous() && cache.dim() == 4 && cache.size(0) == B &&
                      cache.size(1) == n_heads && cache.size(2) == S_max && cache.size(3) == C / n_heads,
                  "decode_step: each cache must be (B, H, S_max, D), contiguous, in the weights' dtype");
  TORCH_CHECK(real.scalar_type() == torch::kBool && real.dim() == 1 && real.size(0) == B && real.is_contiguous(),
              "decode_step: real must be (B,) bool");
  check_ids(token, B, V, "token");
  check_ids(position, B, weights[1].size(0), "position");
  TORCH_CHECK(lang.has_value() == lang_table.has_value(), "decode_step: lang and lang_table go together");
  if (lang_table.has_value()) {
    TORCH_CHECK(lang_table->scalar_type() == dtype && lang_table->is_contiguous(), "decode_step: bad lang_table");
    check_ids(*lang, B, lang_table->size(0), "lang");
  }
  const Step s{B, C, n_heads, C / n_heads, weights[FIRST_BLOCK + LIN1_W].size(0), S_max, slot, float(eps),
               real.data_ptr<bool>()};
  const int64_t* lang_ids = lang.has_value() ? lang->data_ptr<int64_t>() : nullptr;
  if (dtype == torch::kFloat)
    return step<float>(s, token.data_ptr<int64_t>(), position.data_ptr<int64_t>(), lang_ids, weights,
                       lang_table.has_value() ? data<float>(*lang_table) : nullptr, valid.data_ptr<bool>(), k_cache,
                       v_cache);
  return step<uint16_t>(s, token.data_ptr<int64_t>(), position.data_ptr<int64_t>(), lang_ids, weights,
                        lang_table.has_value() ? data<uint16_t>(*lang_table) : nullptr, valid.data_ptr<bool>(),
                        k_cache, v_cache);
}

// torch.ops.xlm.decode_step, called eagerly by xlm/fast.py's `fused_decode_one`.
TORCH_LIBRARY_FRAGMENT(xlm, m) {
  m.def("decode_step(Tensor token, Tensor position, Tensor? lang, Tensor real, int slot, Tensor(a!) valid, "
        "Tensor(b!)[] k_cache, Tensor(c!)[] v_cache, Tensor[] weights, Tensor? lang_table, int n_heads, "
        "float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(xlm, CPU, m) { m.impl("decode_step", &decode_step); }
