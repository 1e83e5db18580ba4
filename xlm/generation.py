"""Left-to-right generation from a causal XLM: token ids in, token ids out (no tokenizer here).

The loop is gpt-fast's: `prefill` runs the whole (left-padded) prompt batch once, writing every layer's keys and
values into a preallocated `KVCache`; then `decode_one` feeds one token per row per step into the next cache
slot. Nothing of the prefix is ever recomputed, and the LM head (46% of the work per token at the
xlm-clm-enfr-1024 shapes) runs on one position per row only.

    prompt (B, T), left-padded        slots 0 .. T-1          slots T, T+1, ...
    ┌──────────────────────────┐      ┌───────────────┐       ┌──┬──┬──
    │ <pad> <pad> </s> w1 w2   │ ───► │   prefill     │ ───►  │d1│d2│ ...  decode_one, one slot per step
    │ </s> w1 w2 w3 w4         │      └───────────────┘       └──┴──┴──
    └──────────────────────────┘

Slots are shared by the batch; positions are not. A row's position embedding index counts its real tokens, so
a left-padded row starts at position 0 like the others (the cache remembers which slots are padding and keeps
them masked). Language ids are per position: the prompt's own, then `continue_lang` for generated tokens,
so an English prompt can continue in French.

What transformers 5.24 does instead (and why this module exists): `XLMWithLMHeadModel.generate()` appends a
dummy `mask_token_id` (= `<s>` for the published configs) to the input at every step and reads the prediction
after it; with its cache on, the cache keeps that dummy token and never sees the generated ones; and the hub
configs say `causal: false`, so the model even sees the future. See docs/usage.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xlm.config import XLMConfig
from xlm.errors import InputError
from xlm.inputs import check_input_ids, language_ids, real_tokens
from xlm.model import XLM, KVCache

# --- Which models may generate ------------------------------------------------------------------------------

UNKNOWN_OBJECTIVE = (
    "the checkpoint does not say how it was trained; load it with objective='clm' or 'mlm' "
    "(command line: --objective clm|mlm)"
)


def require_causal_lm(config: XLMConfig, allow_mlm: bool = False) -> None:
    """Refuse left-to-right use (generation, causal scoring) of a model not trained for it.

    An MLM learned to fill masked tokens from context on both sides; reading it left to right asks for something
    it was never trained to do (transformers' own XLM-MLM generation test expects "the president the president
    ..."). `allow_mlm=True` runs it anyway. A config that does not say how it was trained must be told.
    """
    if config.objective == "clm":
        return
    if config.objective is None:
        raise InputError(UNKNOWN_OBJECTIVE)
    if not allow_mlm:
        raise InputError(
            "this is a masked LM: it was trained to fill masks with context on both sides, not to predict the next "
            "token from the left; pass allow_mlm=True (command line: --allow-mlm) to run it left to right anyway"
        )


# --- Sampling -----------------------------------------------------------------------------------------------


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row, set the others to -inf: (B, V) -> (B, V)."""
    if k >= logits.size(-1):
        return logits
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most probable tokens until their probability reaches p, the rest -> -inf.

    A token is kept when the tokens more probable than it hold less than p of the mass, so the kept set is the
    smallest one whose mass is >= p, and never empty (the most probable token is always kept). (B, V) -> (B, V).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): mass of the strictly more probable tokens
    remove_sorted = mass_before >= p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The next token of every row: logits (B, V) -> ids (B,).

    temperature 0 is greedy decoding: the argmax (the first one on ties); top_k and top_p then change nothing.
    Otherwise, in this order:
      1. temperature: logits / temperature (< 1 sharpens, > 1 flattens);
      2. top-k: keep the k largest logits (the same k whatever the temperature);
      3. top-p: keep the smallest set of most probable tokens whose probability, computed after steps 1-2,
         reaches p;
      4. draw one token from the softmax of what is left, with `generator` (seed it for reproducible output;
         it must live on the logits' device).
    This is the order of transformers' logits warpers (temperature, top-k, top-p) and litgpt's `sample`.
    Works in fp32 whatever the model's dtype. Step 1 divides the logits minus each row's largest, so that any
    temperature > 0 is safe: the largest becomes 0 and the others -x/T <= 0, which a tiny T (1e-40) sends to
    -inf (greedy, ties shared) instead of overflowing to inf - inf = NaN. A T below fp32's smallest normal
    number (1.2e-38, which a Python float can go far below) counts as that number: greedy all the same.
    """
    check_sampling(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    temperature = max(temperature, torch.finfo(torch.float32).tiny)  # 1e-300 would be 0 in fp32: 0 / 0 = NaN
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # (B, V), <= 0: softmax unchanged
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not 0.0 <= temperature < float("inf"):  # also rejects NaN
        raise InputError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


# --- The two model steps ------------------------------------------------------------------------------------


def prefill(model: XLM, input_ids: Tensor, langs: Tensor | None, attention_mask: Tensor, cache: KVCache) -> Tensor:
    """Run the prompt batch into cache slots 0..T-1; logits (B, V) of the next token after each row.

    input_ids, attention_mask, langs (B, T), rows left-padded so that every row's last token is in slot T-1:
    the LM head then runs on that one column only.
    """
    h = model.encode(input_ids, langs, causal=True, attention_mask=attention_mask, cache=cache)  # (B, T, C)
    return model.logits(h[:, -1])  # (B, V)


def decode_one(
    model: XLM, token: Tensor, lang: Tensor | None, cache: KVCache, *, slot: int, position: Tensor, real: Tensor
) -> Tensor:
    """Feed one token per row into cache slot `slot`; logits (B, V) of the token after it.

    token, lang, position (B,): the id, its language id, its position-embedding index (the row's count of real
    tokens before it; passed explicitly, so no step re-counts the prefix). real (B,) bool: False for rows that
    have finished; their slot is recorded as padding, so it is never attended to.
    """
    h = model.encode(
        token[:, None], None if lang is None else lang[:, None], causal=True, attention_mask=real[:, None],
        positions=position[:, None], cache=cache, start_pos=slot,
    )  # fmt: skip
    return model.logits(h[:, 0])  # (B, V)


class Decoder:
    """How `generate` runs the model: `prefill` the prompt batch, then `step` one token per row, per step.

    This one runs the plain model (`prefill` and `decode_one` above). Another implementation of the same two
    calls (xlm.fast.FastDecoder: faster CPU kernels, a step in one C++ call) is passed to `generate` as its
    `decoder`; the model itself stays as it is.
    """

    def prefill(
        self, model: XLM, input_ids: Tensor, langs: Tensor | None, attention_mask: Tensor, cache: KVCache
    ) -> Tensor:
        return prefill(model, input_ids, langs, attention_mask, cache)

    def step(
        self, model: XLM, token: Tensor, lang: Tensor | None, cache: KVCache, *, slot: int, position: Tensor,
        real: Tensor,
    ) -> Tensor:  # fmt: skip
        return decode_one(model, token, lang, cache, slot=slot, position=position, real=real)


# --- The loop -----------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What `generate` returns.

    tokens (B, N) long: the generated ids, N <= max_new_tokens (fewer when every row stopped early); a row that
        emitted `</s>` has it as its last token, followed by `<pad>`.
    lengths (B,) long: generated tokens per row, its `</s>` included.
    logits (B, N, V) float32, only with `output_logits=True`: the raw logits each token was chosen from (before
        temperature and filtering); meaningless after a row's `</s>`.
    """

    tokens: Tensor
    lengths: Tensor
    logits: Tensor | None = None

    def rows(self) -> list[list[int]]:
        """Per-row generated ids, cut at each row's length."""
        return [row[:n] for row, n in zip(self.tokens.tolist(), self.lengths.tolist(), strict=True)]


@torch.no_grad()
def generate(
    model: XLM,
    input_ids: Tensor,
    langs: Tensor | int | None,
    *,
    max_new_tokens: int,
    attention_mask: Tensor | None = None,
    continue_lang: Tensor | int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
    allow_mlm: bool = False,
    output_logits: bool = False,
    decoder: Decoder | None = None,
) -> Generation:
    """Continue each prompt of a batch by up to `max_new_tokens` tokens with the causal model.

    input_ids (B, T): prompts, left-padded with `<pad>` to a common length (`xlm.inputs.left_pad`). A prompt is the
        sentence's first token and its text, *without* the final `</s>` (that would ask for a new sentence):
        `</s> w1 w2` in XLM's original framing, `<s> w1 w2` in transformers'.
    langs: the prompt's language ids: one for all, one per row (B,), or one per position (B, T); None only for
        models without language embeddings.
    attention_mask (B, T): 1/True for real tokens; default `input_ids != pad_id`.
    continue_lang: language id(s) of the generated positions, one or (B,); default: each row's last prompt
        position's language.
    temperature, top_k, top_p, generator: see `sample_next` (temperature 0, the default, is greedy).
    stop_at_eos: a row is finished once it emits `</s>`; the loop ends when every row is.
    allow_mlm: generate from a masked LM anyway (see `require_causal_lm`).
    decoder: what runs the model's two calls; default `Decoder()`, the plain model. `xlm.fast.FastDecoder()`
        gives the same tokens faster on CPU.
    Raises InputError for empty or right-padded prompts, or T + max_new_tokens over the 512 positions.
    """
    config = model.config
    require_causal_lm(config, allow_mlm)
    check_sampling(temperature, top_k, top_p)
    attention_mask = _check_prompts(config, input_ids, attention_mask, max_new_tokens)
    B, T = input_ids.shape
    device = model.embeddings.weight.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    prompt_langs, next_lang = _generation_langs(model, langs, continue_lang, B, T, device)

    decoder = Decoder() if decoder is None else decoder
    cache = model.new_cache(B, T + max_new_tokens)
    logits = decoder.prefill(model, input_ids, prompt_langs, attention_mask, cache)  # (B, V)
    tokens = torch.full((B, max_new_tokens), config.pad_id, dtype=torch.long, device=device)
    kept_logits = torch.empty(B, max_new_tokens, config.vocab_size, device=device) if output_logits else None
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    position = attention_mask.sum(dim=1)  # (B,): the next token's position in its row
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    steps = 0
    for step in range(max_new_tokens):
        if kept_logits is not None:
            kept_logits[:, step] = logits
        token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        tokens[:, step] = token.masked_fill(finished, config.pad_id)  # (B,)
        lengths += ~finished
        if stop_at_eos:
            finished |= token == config.eos_id
        steps = step + 1
        if steps == max_new_tokens or (stop_at_eos and bool(finished.all())):
            break
        # A finished row (also one that has just emitted </s>) is fed <pad>, masked: its slot stays empty.
        real = ~finished
        token = token.masked_fill(finished, config.pad_id)
        logits = decoder.step(model, token, next_lang, cache, slot=T + step, position=position, real=real)
        position += real

    logits_out = None if kept_logits is None else kept_logits[:, :steps]
    return Generation(tokens[:, :steps], lengths, logits_out)


# --- Input checks -------------------------------------------------------------------------------------------


def _check_prompts(config: XLMConfig, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int) -> Tensor:
    """The prompt batch is (B, T), non-empty, left-padded, and fits the positions; returns the bool mask."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    check_input_ids(input_ids)
    mask = real_tokens(input_ids, attention_mask, config.pad_id)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"prompt {empty[0]} is empty: generation needs at least its first token")
    if not mask[:, -1].all() or (mask[:, 1:].int() < mask[:, :-1].int()).any():
        raise InputError("prompts must be left-padded (padding first, every row's last token in the last column)")
    T = input_ids.size(1)
    if T + max_new_tokens > config.max_positions:
        raise InputError(
            f"a prompt of {T} tokens plus {max_new_tokens} new ones needs {T + max_new_tokens} positions; "
            f"XLM has {config.max_positions}"
        )
    return mask


def _generation_langs(
    model: XLM, langs: Tensor | int | None, continue_lang: Tensor | int | None, B: int, T: int, device
) -> tuple[Tensor | None, Tensor | None]:
    """The prompt's language ids (B, T) and the generated tokens' (B,); None for models without a language table."""
    prompt_langs = language_ids(model.config, langs, B, T, device)  # (B, T)
    if prompt_langs is None:
        return None, None
    if continue_lang is None:
        next_lang = prompt_langs[:, -1].clone()
    else:
        shape = tuple(torch.as_tensor(continue_lang).shape)
        if shape not in ((), (B,)):
            raise InputError(f"continue_lang must be one id or (B,) = ({B},); got {shape}")
        next_lang = language_ids(model.config, continue_lang, B, 1, device)[:, 0].clone()  # (B,)
    n_langs = model.config.n_langs
    if next_lang.min() < 0 or next_lang.max() >= n_langs:
        raise InputError(f"continue_lang must be in 0..{n_langs - 1} ({', '.join(model.config.languages)})")
    return prompt_langs, next_lang


__all__ = [
    "Decoder",
    "Generation",
    "decode_one",
    "generate",
    "prefill",
    "require_causal_lm",
    "sample_next",
    "top_k_filter",
    "top_p_filter",
]
