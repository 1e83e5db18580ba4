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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlm.config import XLMConfig
from xlm.errors import InputError
from xlm.inputs import check_input_ids, check_ranges, language_ids, real_tokens

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


# Which of the two a model computes with is chosen when it is built: XLM(config, attention="reference").
ATTENTION = {"sdpa": attention_sdpa, "reference": attention_reference}


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
    Which slots a call writes is explicit (`start_pos`), so a caller can also rewind: a causal call at slots
    start_pos..end-1 attends to slots < end only, so what earlier calls left beyond them is ignored, and
    overwritten as decoding goes on (tests/test_model.py).
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
    def __init__(self, config: XLMConfig, attend: Callable[..., Tensor] = attention_sdpa):
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.attention_dropout
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)
        self.attend = attend  # attention_sdpa or attention_reference, fixed when the model is built

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

    def __init__(self, config: XLMConfig, attend: Callable[..., Tensor] = attention_sdpa):
        super().__init__()
        self.dropout = config.dropout
        self.attention = MultiHeadAttention(config, attend)
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
    """The XLM encoder with its tied language-model head: token ids (B, T) -> logits (B, T, V).

    attention: "sdpa" (PyTorch's fused kernel, the default) or "reference" (the plain formulation, the
    specification: transformers' bits on CPU). Both compute the same function (docs/parity.md).
    """

    def __init__(self, config: XLMConfig, *, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION:
            raise InputError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        self.config = config
        C = config.dim
        self.embeddings = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_id)
        self.position_embeddings = nn.Embedding(config.max_positions, C)
        self.lang_embeddings = nn.Embedding(config.n_langs, C) if config.has_lang_embeddings else None
        self.layer_norm_emb = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(config, ATTENTION[attention]) for _ in range(config.n_layers))
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

    def logits(self, h: Tensor) -> Tensor:
        """Hidden states (..., C) -> logits (..., V): the tied word embeddings plus the output bias."""
        return F.linear(h, self.embeddings.weight, self.output_bias)

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
    ) -> Tensor:
        """Final hidden states (B, T, C); with `all_layers`, the embedding output and every block's, (L+1, B, T, C).

        input_ids (B, T). langs: one language id for everything, one per row (B,), or one per position (B, T);
            required when the model has language embeddings (omitting them silently degrades XLM).
        causal: True for CLM use (each position sees its past), False for MLM use (sees the whole row).
        attention_mask (B, T): 1 for real tokens, 0 for padding; default `input_ids != pad_id`.
        positions (B, T): position-embedding indices; default: the number of real tokens before each one in its
            row (cached ones included), so left and right padding both give a row the positions 0, 1, 2, ...
            Explicit positions serve TLM, where each sentence of a pair counts from 0 (the original's
            `positions` argument).
        cache, start_pos: write this call's keys/values to slots start_pos.. of `cache` and attend to the
            slots before them too (causal only: only then does a cache reproduce a full forward).
        Bad input raises InputError (xlm/inputs.py holds the checks and defaults).
        """
        B, T = self._check_call(input_ids, cache, start_pos, causal)
        real = real_tokens(input_ids, attention_mask, self.config.pad_id)  # (B, T) bool
        key_valid = real if cache is None else cache.record(start_pos, real)  # (B, S)
        if positions is None:
            positions = (key_valid.cumsum(dim=1) - 1).clamp(min=0)[:, start_pos:]  # (B, T)
        langs = language_ids(self.config, langs, B, T, self.embeddings.weight.device)  # (B, T) or None (no table)
        check_ranges(self.config, input_ids, positions, langs)
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

    def _check_call(self, input_ids: Tensor, cache: KVCache | None, start_pos: int, causal: bool) -> tuple:
        """(B, T) of a well-formed call: ids (xlm/inputs.py), and a cache used the one way it is exact."""
        B, T = check_input_ids(input_ids)
        if cache is not None and not causal:
            raise InputError("a KV cache reproduces a full forward only under causal attention: pass causal=True")
        if cache is None and start_pos != 0:
            raise InputError("start_pos is a cache slot: it needs a cache")
        if cache is not None and cache.valid.size(0) != B:
            raise InputError(f"the cache has {cache.valid.size(0)} rows, input_ids {B}")
        if cache is not None and not 0 <= start_pos <= cache.max_len - T:
            raise InputError(f"the cache holds {cache.max_len} positions; this call needs {start_pos + T}")
        return B, T
