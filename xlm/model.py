"""XLM, the cross-lingual language model of Lample & Conneau (2019, arXiv:1901.07291), in one file.

One Transformer encoder serves both objectives of the paper: causal language modelling (CLM: each position sees
its past) and masked language modelling (MLM/TLM: each position sees the whole sentence). Which of the two is a
per-call choice (`causal=`), as in the original code (facebookresearch/XLM, xlm/model/transformer.py): the
weights do not know how they were trained.

What is distinctive about XLM, compared with BERT and GPT-2:
- The input is word embedding + learned absolute position embedding (512 positions) + language embedding,
  then a LayerNorm of that sum (eps 1e-12). The language embedding tells every position which language it is
  in; xlm-mlm-17/100-1280 were trained without one.
- Post-LayerNorm blocks, the 2017 Transformer's order: x = LN(x + Attn(x)); x = LN(x + FFN(x)). No final LN.
- Padding is zeroed: hidden states are multiplied by the padding mask after the embeddings and after every
  block, and padded keys are never attended to (here also under causal attention, which transformers misses).
- Attention scales q by 1/sqrt(D) *before* q @ kᵀ and takes its softmax in fp32.
- The FFN is Linear(C, 4C) -> exact (erf) GELU -> Linear(4C, C).
- The output projection is the word-embedding matrix itself (tied) plus a bias of its own.

Parameter names are the checkpoint's (`q_lin`, `lin1`, `layer_norm_emb`, ...), grouped per block, so loading
is a small key table (xlm/checkpoint.py) rather than a converter.

Notation used in the shape comments:
    B batch   T positions in this call   S key positions (cached + new)   C model width (dim)
    H heads   D head width (C / H)       F FFN width (4C)   V vocabulary   L layers
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlm.config import XLMConfig
from xlm.errors import InputError

# --- Attention ----------------------------------------------------------------------------------------------


def attention_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float = 0.0) -> Tensor:
    """The specification: XLM's attention exactly as the original code computes it.

    q (B, H, T, D), k and v (B, H, S, D), allowed (B, 1, T, S) bool -> (B, H, T, D). Gives the same bits as
    transformers' `MultiHeadAttention` on CPU. `attention_sdpa` below must agree with it (tests/test_model.py).
    """
    q = q / math.sqrt(q.size(-1))  # scale q before the product, as the original does
    scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).type_as(scores)  # fp32 softmax, also for bf16/fp16
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v  # (B, H, T, D)


def attention_sdpa(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float = 0.0) -> Tensor:
    """The same attention through PyTorch's fused kernel, q scaled first as above (then `scale=1`).

    Scaling q, rather than the scores, rounds as the original does; what remains is the kernel's blockwise
    softmax: ~1e-6 on fp32 logits (docs/parity.md).
    """
    q = q / math.sqrt(q.size(-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=1.0)


def attention_allowed(key_valid: Tensor, start_pos: int, n_queries: int, causal: bool) -> Tensor:
    """Which keys each query may see: (B, S) real-key flags -> (B, 1, T, S) bool.

    Query t sits in slot `start_pos + t`; key s in slot s. Padded keys are never seen, in both modes.
    Every query may see itself: a padded query at the start of a left-padded row has no real key before it,
    and an all-masked row would make the softmax NaN. Real queries see themselves anyway; padded ones are
    zeroed after each block, so this changes no real output.
    """
    key_slot = torch.arange(key_valid.size(1), device=key_valid.device)  # (S,)
    query_slot = start_pos + torch.arange(n_queries, device=key_valid.device)[:, None]  # (T, 1)
    allowed = key_valid[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        allowed = allowed & (key_slot <= query_slot)  # (B, 1, T, S)
    return allowed | (key_slot == query_slot)  # (B, 1, T, S)


class KVCache:
    """Keys and values of every layer for the slots seen so far, preallocated for `max_len` slots.

    Slot s holds position s of the (possibly left-padded) batch, the same slot for every row. `valid` remembers
    which slots hold real tokens, so that padding stays masked in later calls and positions can be counted.
    Which slots a call writes is explicit (`start_pos`), so a caller can also rewind.
    """

    def __init__(self, config: XLMConfig, batch_size: int, max_len: int, *, dtype: torch.dtype, device):
        if not 0 < max_len <= config.max_positions:
            raise InputError(f"cache length {max_len} is not in 1..{config.max_positions}")
        shape = (batch_size, config.n_heads, max_len, config.head_dim)  # (B, H, S_max, D) per layer
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # (B, S_max)

    @property
    def max_len(self) -> int:
        return self.valid.size(1)

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]  # (B, H, S_max, D)

    def record(self, start_pos: int, real: Tensor) -> Tensor:
        """Mark slots start_pos.. as real or padding (real: (B, T)); return the flags of slots 0..end, (B, S)."""
        end = start_pos + real.size(1)
        if end > self.max_len:
            raise InputError(f"the cache holds {self.max_len} positions; this call needs {end}")
        self.valid[:, start_pos:end] = real
        return self.valid[:, :end]


class MultiHeadAttention(nn.Module):
    def __init__(self, config: XLMConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.attention_dropout
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)
        self.attend = attention_sdpa  # or attention_reference: XLM.use_reference_attention()

    def forward(
        self, x: Tensor, allowed: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None, start_pos: int = 0
    ) -> Tensor:
        """x (B, T, C), allowed (B, 1, T, S) -> (B, T, C). With a cache, this call's keys go to its slots."""
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        q = self.q_lin(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_lin(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = self.v_lin(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k_cache, v_cache = kv_cache  # (B, H, S_max, D)
            end = start_pos + T
            k_cache[:, :, start_pos:end] = k
            v_cache[:, :, start_pos:end] = v
            k, v = k_cache[:, :, :end], v_cache[:, :, :end]  # (B, H, S, D)
        out = self.attend(q, k, v, allowed, self.dropout if self.training else 0.0)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.out_lin(out)


# --- Feed-forward and the block -----------------------------------------------------------------------------


class FeedForward(nn.Module):
    def __init__(self, config: XLMConfig):
        super().__init__()
        self.dropout = config.dropout
        self.lin1 = nn.Linear(config.dim, config.ffn_dim)
        self.lin2 = nn.Linear(config.ffn_dim, config.dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, F) -> (B, T, C); GELU with the exact erf, not the tanh approximation."""
        x = self.lin2(F.gelu(self.lin1(x)))
        return F.dropout(x, p=self.dropout, training=self.training)


class Block(nn.Module):
    """One post-LN Transformer layer. The checkpoint stores its parts as attentions.{i}, layer_norm1.{i}, ...

    x ─┬─► attention ─► (+) ─► layer_norm1 ─┬─► ffn ─► (+) ─► layer_norm2 ─►
       └─────────────────┘                  └──────────┘
    """

    def __init__(self, config: XLMConfig):
        super().__init__()
        self.dropout = config.dropout
        self.attention = MultiHeadAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.layer_norm2 = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, allowed: Tensor, kv_cache: tuple[Tensor, Tensor] | None, start_pos: int) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        attn = F.dropout(self.attention(x, allowed, kv_cache, start_pos), p=self.dropout, training=self.training)
        x = self.layer_norm1(x + attn)
        return self.layer_norm2(x + self.ffn(x))


# --- The model ----------------------------------------------------------------------------------------------


class XLM(nn.Module):
    """The XLM encoder with its tied language-model head: token ids (B, T) -> logits (B, T, V)."""

    def __init__(self, config: XLMConfig):
        super().__init__()
        self.config = config
        C = config.dim
        self.embeddings = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_id)
        self.position_embeddings = nn.Embedding(config.max_positions, C)
        self.lang_embeddings = nn.Embedding(config.n_langs, C) if config.has_lang_embeddings else None
        self.layer_norm_emb = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        # The output projection's weight is `embeddings.weight` (tied); only its bias is a parameter of its own.
        # Tying by construction, not by sharing a Parameter, so loading with assign=True cannot untie it.
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.init_weights()

    def init_weights(self) -> None:
        """The original initialisation: embeddings N(0, C^-1/2) with a zero padding row; nn.Linear defaults."""
        for table in (self.embeddings, self.position_embeddings, self.lang_embeddings):
            if table is not None:
                nn.init.normal_(table.weight, mean=0.0, std=self.config.dim**-0.5)
        with torch.no_grad():
            self.embeddings.weight[self.config.pad_id].zero_()
            self.output_bias.zero_()

    def use_reference_attention(self, reference: bool = True) -> None:
        """Switch every layer between the fused SDPA kernel and the plain formulation (the specification)."""
        for block in self.blocks:
            block.attention.attend = attention_reference if reference else attention_sdpa

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch_size` rows and `max_len` slots, in the model's dtype and device."""
        weight = self.embeddings.weight
        return KVCache(self.config, batch_size, max_len, dtype=weight.dtype, device=weight.device)

    def forward(
        self,
        input_ids: Tensor,
        langs: Tensor | int | None = None,
        *,
        causal: bool,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> Tensor:
        """Logits (B, T, V) of every position; see `encode` for the arguments."""
        h = self.encode(
            input_ids, langs, causal=causal, attention_mask=attention_mask, positions=positions,
            cache=cache, start_pos=start_pos,
        )  # fmt: skip
        return self.logits(h)

    # The head's matrix product. xlm/fast.py (opt-in) swaps in a faster CPU kernel on the same weights.
    linear = staticmethod(F.linear)

    def logits(self, h: Tensor) -> Tensor:
        """Hidden states (..., C) -> logits (..., V): the tied word embeddings plus the output bias."""
        return self.linear(h, self.embeddings.weight, self.output_bias)

    def encode(
        self,
        input_ids: Tensor,
        langs: Tensor | int | None = None,
        *,
        causal: bool,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
        all_layers: bool = False,
        check_ranges: bool = True,
    ) -> Tensor:
        """Final hidden states (B, T, C); with `all_layers`, the embedding output and every block's, (L+1, B, T, C).

        input_ids (B, T). langs: one language id for everything, one per row (B,), or one per position (B, T);
            required when the model has language embeddings (omitting them silently degrades XLM).
        causal: True for CLM use (each position sees its past), False for MLM use (sees the whole row).
        attention_mask (B, T): 1 for real tokens, 0 for padding; default `input_ids != pad_id`.
        positions (B, T): position-embedding indices; default: the number of real tokens before each one in its
            row (cached ones included), so left and right padding both give a row the positions 0, 1, 2, ...
        cache, start_pos: write this call's keys/values to slots start_pos.. of `cache` and attend to the
            slots before them too (causal only: only then does a cache reproduce a full forward).
        check_ranges: False skips checking ids, positions and langs against the tables (each check reads a value
            back to Python: a host sync on a GPU, a graph break for torch.compile); for generate's decode steps,
            whose inputs are the model's own predictions.
        """
        B, T = self._check_shape(input_ids, cache, start_pos, causal)
        real = input_ids.ne(self.config.pad_id) if attention_mask is None else attention_mask.bool()  # (B, T)
        key_valid = real if cache is None else cache.record(start_pos, real)  # (B, S)
        if positions is None:
            positions = (key_valid.cumsum(dim=1) - 1).clamp(min=0)[:, start_pos:]  # (B, T)
        langs = self._language_ids(langs, B, T)
        if check_ranges:
            self._check_ranges(input_ids, positions, langs)
        allowed = attention_allowed(key_valid, start_pos, T, causal)  # (B, 1, T, S)
        keep = real.unsqueeze(-1).to(self.embeddings.weight.dtype)  # (B, T, 1): zeroes padded positions

        x = self.embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, C)
        if self.lang_embeddings is not None:
            x = x + self.lang_embeddings(langs)
        x = F.dropout(self.layer_norm_emb(x), p=self.config.dropout, training=self.training) * keep
        layers = [x]
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, cache.layer(i) if cache is not None else None, start_pos) * keep
            layers.append(x)
        return torch.stack(layers) if all_layers else x

    # --- input checks: a clear error instead of an index error deep inside, or a silent wrong answer ----------

    def _check_shape(self, input_ids: Tensor, cache: KVCache | None, start_pos: int, causal: bool) -> tuple:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32) or input_ids.size(1) == 0:
            raise InputError(f"input_ids must be a non-empty (B, T) integer tensor, got {tuple(input_ids.shape)}")
        if cache is not None and not causal:
            raise InputError("a KV cache reproduces a full forward only under causal attention: pass causal=True")
        if cache is None and start_pos != 0:
            raise InputError("start_pos is a cache slot: it needs a cache")
        if cache is not None and cache.valid.size(0) != input_ids.size(0):
            raise InputError(f"the cache has {cache.valid.size(0)} rows, input_ids {input_ids.size(0)}")
        return tuple(input_ids.shape)

    def _language_ids(self, langs: Tensor | int | None, B: int, T: int) -> Tensor | None:
        """One id, (B,) or (B, T) -> (B, T); None only for models without language embeddings."""
        if self.lang_embeddings is None:
            return None  # a model trained without language embeddings ignores them, as in the original
        if langs is None:
            names = ", ".join(f"{n}={i}" for n, i in self.config.lang2id.items())
            raise InputError(f"this model has language embeddings ({names}): pass langs")
        device = self.embeddings.weight.device
        langs = torch.as_tensor(langs, dtype=torch.long, device=device)
        if langs.dim() == 1 and langs.size(0) == B:
            langs = langs[:, None]  # (B, 1)
        if langs.dim() > 2 or (langs.dim() == 2 and langs.size(1) not in (1, T)):
            raise InputError(f"langs must be one id, (B,) or (B, T) = ({B}, {T}); got {tuple(langs.shape)}")
        return langs.expand(B, T)

    def _check_ranges(self, input_ids: Tensor, positions: Tensor, langs: Tensor | None) -> None:
        cfg = self.config
        if input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size:
            raise InputError(f"token ids must be in 0..{cfg.vocab_size - 1}")
        if positions.shape != input_ids.shape or positions.min() < 0 or positions.max() >= cfg.max_positions:
            raise InputError(f"positions must be (B, T) in 0..{cfg.max_positions - 1}: XLM has learned positions")
        if langs is not None and (langs.min() < 0 or langs.max() >= cfg.n_langs):
            raise InputError(f"language ids must be in 0..{cfg.n_langs - 1} ({', '.join(cfg.languages)})")
