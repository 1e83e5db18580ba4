"""Scoring text with XLM: log-probabilities under the causal model, perplexity, and filling masks.

Ids in, numbers out; the tokenizer (and so the framing) is the caller's choice. A sentence is scored as XLM's
CLM was trained (facebookresearch/XLM, `clm_step`: the targets are the inputs shifted by one). Every token after
the first is predicted from the tokens before it, the final `</s>` included; the first one (the BOS: `</s>` in
the original framing, `<s>` in transformers') is only conditioned on.

    log P(sentence) = Σ_{t ≥ 1} log P(x_t | x_<t)
    perplexity of a corpus = exp(Σ_sentences NLL / Σ_sentences scored tokens)   (a token-weighted mean)

transformers' `XLMWithLMHeadModel(labels=...)` does *not* shift its labels (its docstring says it does), and its
hub config runs the CLM bidirectionally: a loss from it is not the causal LM's.

Fill-mask: a masked LM predicts each `<special1>` from both sides (`fill_mask`, as transformers' fill-mask
pipeline); a causal LM cannot see the right side, so it ranks given fillers by the likelihood of the whole
sentence instead (`rank_fillers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from xlm.config import XLMConfig
from xlm.errors import InputError
from xlm.generation import UNKNOWN_OBJECTIVE, require_causal_lm
from xlm.inputs import check_input_ids, real_tokens, right_pad
from xlm.model import XLM

LOGITS_CHUNK = 256  # positions per LM-head call: 256 x 64,139 fp32 logits = 66 MB, whatever the batch


# --- Log-probabilities under the causal model ---------------------------------------------------------------


@torch.no_grad()
def token_logprobs(
    model: XLM,
    input_ids: Tensor,
    langs: Tensor | int | None,
    *,
    attention_mask: Tensor | None = None,
    allow_mlm: bool = False,
) -> Tensor:
    """log P(x_t | x_<t) of every token after the first: input_ids (B, T) -> (B, T-1) float32.

    Column t-1 holds the log-probability of input_ids[:, t]; a column whose token or whose previous token is
    padding holds 0 (so sums are right with left or right padding). langs: one id, (B,) or (B, T).
    The LM head runs only on the positions that predict a real token, in chunks of LOGITS_CHUNK.
    """
    require_causal_lm(model.config, allow_mlm)
    check_input_ids(input_ids)
    input_ids = input_ids.to(model.embeddings.weight.device)
    mask = real_tokens(input_ids, attention_mask, model.config.pad_id)  # (B, T) bool
    h = model.encode(input_ids, langs, causal=True, attention_mask=mask)  # (B, T, C)
    scored = mask[:, 1:] & mask[:, :-1]  # (B, T-1): x_t is real and so is the token that predicts it
    logprobs = torch.zeros(scored.shape, dtype=torch.float32, device=h.device)  # (B, T-1)
    logprobs[scored] = target_logprobs(model, h[:, :-1][scored], input_ids[:, 1:][scored])
    return logprobs


def target_logprobs(model: XLM, h: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits(h))[target] for hidden states h (N, C) and targets (N,) -> (N,) float32."""
    out = []
    for h_chunk, t_chunk in zip(h.split(LOGITS_CHUNK), targets.split(LOGITS_CHUNK), strict=True):
        logits = model.logits(h_chunk).float()  # (n, V)
        out.append(logits.gather(-1, t_chunk[:, None]).squeeze(-1) - logits.logsumexp(dim=-1))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


def sentence_logprob(
    model: XLM,
    input_ids: Tensor,
    langs: Tensor | int | None,
    *,
    attention_mask: Tensor | None = None,
    allow_mlm: bool = False,
) -> Tensor:
    """log P(sentence) = the sum of `token_logprobs` of each row: (B, T) -> (B,) float32."""
    return token_logprobs(model, input_ids, langs, attention_mask=attention_mask, allow_mlm=allow_mlm).sum(dim=1)


# --- Perplexity of a corpus ---------------------------------------------------------------------------------


@dataclass
class Perplexity:
    """Totals over a corpus; `perplexity` is exp(nll / tokens)."""

    nll: float  # Σ -log P(x_t | x_<t) over every scored token, in nats (summed exactly: math.fsum)
    tokens: int  # scored tokens: every token after each sentence's first
    sentence_logprobs: list[float]  # log P(sentence) of each sentence, in input order
    sentence_tokens: list[int] = field(default_factory=list)  # scored tokens of each sentence, in input order

    @classmethod
    def of_sentences(cls, logprobs: list[float], tokens: list[int]) -> Perplexity:
        """Totals of per-sentence scores; math.fsum makes them independent of the order they were computed in."""
        return cls(-math.fsum(logprobs), sum(tokens), list(logprobs), list(tokens))

    @property
    def sentences(self) -> int:
        return len(self.sentence_logprobs)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan


def corpus_perplexity(
    model: XLM,
    sequences: Sequence[Sequence[int]],
    lang: int | None,
    *,
    max_batch_tokens: int = 4096,
    allow_mlm: bool = False,
    progress: bool | None = False,
) -> Perplexity:
    """Perplexity of framed sentences (each a list of ids, BOS first) in one language.

    Sentences are sorted by length and batched so that rows x longest row <= max_batch_tokens (one row at
    least), right-padded: little padding, bounded memory. progress: a tqdm bar on stderr (None: only on a
    terminal). xlm/distributed.py scores the same batches over several processes.
    """
    check_corpus(model, sequences, allow_mlm)
    logprobs, tokens = [0.0] * len(sequences), [0] * len(sequences)
    disable = None if progress is None else not progress  # tqdm: None = only on a terminal
    with tqdm(total=len(sequences), unit="sentence", disable=disable, leave=False) as bar:
        for batch in length_batches(sequences, max_batch_tokens):
            for i, logprob, count in score_batch(model, sequences, batch, lang, allow_mlm=allow_mlm):
                logprobs[i], tokens[i] = logprob, count
            bar.update(len(batch))
    return Perplexity.of_sentences(logprobs, tokens)


def check_corpus(model: XLM, sequences: Sequence[Sequence[int]], allow_mlm: bool = False) -> None:
    """A causal LM, at least one sentence, and none longer than the model's positions."""
    require_causal_lm(model.config, allow_mlm)
    if len(sequences) == 0:
        raise InputError("no sentences to score: the perplexity of an empty corpus is undefined")
    limit = model.config.max_positions
    for index, ids in enumerate(sequences):
        if len(ids) > limit:
            raise InputError(f"sentence {index + 1} has {len(ids)} tokens; XLM has {limit} positions")


def score_batch(
    model: XLM, sequences: Sequence[Sequence[int]], batch: list[int], lang: int | None, *, allow_mlm: bool = False
) -> list[tuple[int, float, int]]:
    """Score sequences[i] for i in `batch` together (right-padded): (i, log P(sentence), scored tokens) each.

    A sentence's score depends on its batch in the last bits (matmul shapes change the summation order, ~1e-6),
    so whoever wants the same bits must form the same batches (`length_batches`).
    """
    input_ids, mask = right_pad([sequences[i] for i in batch], model.config.pad_id)
    per_token = token_logprobs(model, input_ids, lang, attention_mask=mask, allow_mlm=allow_mlm)  # (B, T-1)
    per_sentence = per_token.double().sum(dim=1).tolist()
    counts = (mask[:, 1:] & mask[:, :-1]).sum(dim=1).tolist()
    return list(zip(batch, per_sentence, counts, strict=True))


def length_batches(sequences: Sequence[Sequence[int]], max_batch_tokens: int) -> list[list[int]]:
    """Indices of `sequences` grouped by length (longest first) into batches of <= max_batch_tokens padded ids."""
    if max_batch_tokens < 1:
        raise InputError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    batches: list[list[int]] = []
    for i in order:
        width = len(sequences[batches[-1][0]]) if batches else 0  # the batch's first row is its longest
        if batches and (len(batches[-1]) + 1) * width <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


# --- Fill-mask ----------------------------------------------------------------------------------------------


@dataclass
class MaskFill:
    """The top-k fillers of one mask: transformers' fill-mask pipeline gives the same ids and scores."""

    row: int  # which sequence of the batch
    position: int  # index of the `<special1>` in that row
    token_ids: list[int]  # most probable first
    probs: list[float]  # their softmax probabilities at the mask (the pipeline's "score")


@torch.no_grad()
def fill_mask(
    model: XLM,
    input_ids: Tensor,
    langs: Tensor | int | None,
    *,
    top_k: int = 5,
    attention_mask: Tensor | None = None,
) -> list[MaskFill]:
    """The top_k tokens at every `<special1>` of a batch (B, T), under bidirectional attention; row-major order.

    Scores are the softmax (fp32) of the logits at the mask position, as in transformers' pipeline, which also
    returns `top_k` tokens per mask, every mask of a sequence separately. Unlike the pipeline, language ids are
    passed (the pipeline drops them, which silently changes an XLM with language embeddings).
    """
    require_masked_lm(model.config)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    check_input_ids(input_ids)
    mask = real_tokens(input_ids, attention_mask, model.config.pad_id)  # (B, T) bool
    where = ((input_ids == model.config.mask_id) & mask).nonzero()  # (N, 2): row, position
    if where.numel() == 0:
        raise InputError(f"no mask token <special1> (id {model.config.mask_id}) in the input")
    h = model.encode(input_ids, langs, causal=False, attention_mask=mask)  # (B, T, C)
    probs = model.logits(h[where[:, 0], where[:, 1]]).float().softmax(dim=-1)  # (N, V)
    values, ids = probs.topk(min(top_k, probs.size(-1)), dim=-1)  # (N, k)
    return [
        MaskFill(row, position, token_ids, scores)
        for (row, position), token_ids, scores in zip(where.tolist(), ids.tolist(), values.tolist(), strict=True)
    ]


def require_masked_lm(config: XLMConfig) -> None:
    """Top-k filling needs a model that sees both sides of the mask."""
    if config.objective == "mlm":
        return
    if config.objective is None:
        raise InputError(UNKNOWN_OBJECTIVE)
    raise InputError(
        "this is a causal LM: it never sees the right side of a mask, so it cannot fill one; rank candidate "
        "fillers by sentence likelihood instead (rank_fillers; command line: --candidates a,b,c)"
    )


def rank_fillers(
    model: XLM,
    input_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    lang: int | None,
    *,
    allow_mlm: bool = False,
) -> Tensor:
    """log P(sentence) with the one `<special1>` of `input_ids` replaced by each candidate's ids: (n,) float32.

    input_ids: one framed sentence (BOS first) with exactly one mask token. A candidate may be several ids:
    the score is the probability of the whole filled sentence, so a filler of more tokens has more factors to
    pay for (this is a likelihood, not a per-token average).
    """
    mask_id = model.config.mask_id
    spots = [i for i, token in enumerate(input_ids) if token == mask_id]
    if len(spots) != 1:
        raise InputError(f"ranking fillers needs exactly one mask token <special1>, found {len(spots)}")
    if not candidates or any(len(c) == 0 for c in candidates):
        raise InputError("give at least one candidate, each of at least one token")
    before, after = list(input_ids[: spots[0]]), list(input_ids[spots[0] + 1 :])
    sentences = [before + list(candidate) + after for candidate in candidates]
    longest = max(len(s) for s in sentences)
    if longest > model.config.max_positions:
        raise InputError(f"a filled sentence has {longest} tokens; XLM has {model.config.max_positions} positions")
    input_ids_batch, attention_mask = right_pad(sentences, model.config.pad_id)
    return sentence_logprob(model, input_ids_batch, lang, attention_mask=attention_mask, allow_mlm=allow_mlm)


__all__ = [
    "LOGITS_CHUNK",
    "MaskFill",
    "Perplexity",
    "check_corpus",
    "corpus_perplexity",
    "fill_mask",
    "length_batches",
    "rank_fillers",
    "score_batch",
    "sentence_logprob",
    "target_logprobs",
    "token_logprobs",
]
