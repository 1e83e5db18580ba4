"""Cross-lingual retrieval: how well a model's sentence representations line up across two languages.

For each sentence of one language, the sentence of the other language whose representation is closest (cosine)
among all candidates is retrieved; accuracy is the share of queries whose own translation comes first. With M
candidates, chance is 1 / M. Representations:

- `sentence_embeddings`: the mean of the model's last layer over a sentence's real tokens (the `</s>` framing
  included, padding excluded), as the experiment of docs/experiments.md measures it;
- `bag_of_pieces`: the sentence's BPE piece counts (special tokens excluded). Translations of software messages
  share numbers, names and options (`GNU`, `UTF-8`, `--verbose`): this is the lexical floor a model must beat
  before its retrieval says anything about alignment.

Ties (two candidates with the same similarity, common for bags of pieces) are counted as a random choice among
the tied candidates would be on average: a query whose translation is among k best-tied candidates scores 1 / k.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from xlm.errors import InputError
from xlm.model import XLM

N_SPECIAL = 14  # ids 0-13: <s> </s> <pad> <unk> <special0>..<special9> (XLM's dictionary)


@torch.no_grad()
def sentence_embeddings(
    model: XLM, sentences: Sequence[Sequence[int]], lang_id: int, *, causal: bool = False, batch_size: int = 64
) -> Tensor:
    """(N, C) float32: the mean of the last layer over each sentence's tokens.

    sentences: token ids, framed as the model saw them in training (`</s> ... </s>`). causal: encode as a CLM
    (each position sees its past only), for a model trained causally. Sentences are batched in order of length,
    right-padded; padding is masked, so a sentence's vector does not depend on its batch.
    """
    if not sentences or any(len(ids) == 0 for ids in sentences):
        raise InputError("sentence_embeddings needs at least one sentence and no empty one")
    was_training = model.training
    model.eval()
    device = model.embeddings.weight.device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = torch.empty(len(sentences), model.config.dim)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        width = max(len(sentences[i]) for i in chosen)
        ids = torch.full((len(chosen), width), model.config.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(chosen), width, dtype=torch.bool)  # (B, T): True = real token
        for row, i in enumerate(chosen):
            ids[row, : len(sentences[i])] = torch.as_tensor(sentences[i])
            mask[row, : len(sentences[i])] = True
        h = model.encode(ids.to(device), lang_id, causal=causal, attention_mask=mask.to(device)).float()  # (B, T, C)
        real = mask.to(device).unsqueeze(-1)  # (B, T, 1)
        out[chosen] = ((h * real).sum(1) / real.sum(1)).cpu()  # (B, C)
    model.train(was_training)
    return out


def bag_of_pieces(sentences: Sequence[Sequence[int]], vocab_size: int) -> Tensor:
    """(N, V) sparse float32 counts of each sentence's BPE pieces; special ids (< 14) are not counted."""
    rows, cols = [], []
    for row, ids in enumerate(sentences):
        kept = [i for i in ids if i >= N_SPECIAL]
        rows += [row] * len(kept)
        cols += kept
    indices = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)  # (2, nnz)
    shape = (len(sentences), vocab_size)
    counts = torch.sparse_coo_tensor(indices, torch.ones(indices.size(1)), shape, check_invariants=True)
    return counts.coalesce()  # repeated (row, piece) entries summed: counts


def cosine_similarities(queries: Tensor, candidates: Tensor) -> Tensor:
    """(N, M) cosine similarity of every query with every candidate; dense or sparse (N, D) and (M, D) inputs.

    A zero vector (a bag with no pieces) has similarity 0 with everything.
    """
    if queries.is_sparse:
        with warnings.catch_warnings():  # torch multiplies through CSR, and says that its CSR support is in beta
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            dots = torch.sparse.mm(queries, candidates.t()).to_dense()  # (N, M)
        norms = [torch.sparse.sum(x * x, dim=1).to_dense().sqrt() for x in (queries, candidates)]  # (N,), (M,)
    else:
        dots = queries @ candidates.t()  # (N, M)
        norms = [x.norm(dim=1) for x in (queries, candidates)]
    return dots / (norms[0][:, None] * norms[1][None, :]).clamp(min=1e-12)


def retrieval_accuracy(similarities: Tensor) -> float:
    """Share of queries i whose candidate i scores highest in row i of (N, M) similarities (M >= N); ties are
    counted as a random choice among the tied best (module docstring)."""
    n = similarities.size(0)
    if similarities.dim() != 2 or similarities.size(1) < n or n == 0:
        raise InputError(f"similarities must be (N, M) with M >= N > 0, got {tuple(similarities.shape)}")
    correct = similarities[torch.arange(n), torch.arange(n)]  # (N,)
    best = similarities.max(dim=1).values  # (N,)
    tied = (similarities == best[:, None]).sum(dim=1)  # (N,)
    return ((correct == best).float() / tied).mean().item()


def retrieval(first: Tensor, second: Tensor, *, center: bool = False) -> dict[str, float]:
    """Both directions between line-aligned representations (row i of `first` translates row i of `second`):
    {"forward": first -> second, "backward": second -> first, "chance": 1 / M, "candidates": M}.

    center: subtract each set's mean vector first (dense only). A language embedding adds one offset to every
    vector of its language, and mean-pooled hidden states share a large common direction; both can hide the
    sentence-level signal from a plain cosine (an untrained model: tests/test_retrieval.py).
    """
    if first.shape[0] != second.shape[0]:
        raise InputError(f"retrieval needs line-aligned sets, got {first.shape[0]} and {second.shape[0]} rows")
    if center:
        if first.is_sparse or second.is_sparse:
            raise InputError("center=True needs dense vectors (a centred bag of pieces is no longer sparse)")
        first, second = first - first.mean(0), second - second.mean(0)
    similarities = cosine_similarities(first, second)  # (N, N)
    n = similarities.size(0)
    return {
        "forward": retrieval_accuracy(similarities),
        "backward": retrieval_accuracy(similarities.t()),
        "chance": 1.0 / n,
        "candidates": n,
    }
