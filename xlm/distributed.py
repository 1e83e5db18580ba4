"""Scoring a corpus with several processes: torch.distributed, launched by torchrun.

    torchrun --nproc-per-node 4 -m xlm score --model DIR --lang en --file corpus.txt --json > scores.json

`xlm score --file` notices torchrun's environment (WORLD_SIZE > 1) and joins the process group (gloo on CPU,
NCCL on CUDA, one GPU per process by LOCAL_RANK). Then:

1. every process reads the file; process r tokenizes lines r, r+N, r+2N, ...; the ids are all-gathered;
2. every process forms the single-process batches (`length_batches` over the whole corpus) and scores batches
   r, r+N, ... (the longest come first, so the processes get similar work);
3. rank 0 gathers (line, log-prob, tokens) triples and writes the results in input order.

Why whole batches rather than lines: a sentence's score depends on which sentences share its batch in the last
bits (matmul shapes change the summation order, ~1e-6), so splitting the lines differently would change the
scores. Scoring the very batches of a single-process run gives bitwise the same per-line scores, and the totals
are exact sums (math.fsum), whatever the number of processes (tests/test_distributed.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import torch
import torch.distributed as dist

from xlm.errors import XLMError
from xlm.model import XLM
from xlm.scoring import Perplexity, check_corpus, length_batches, score_batch
from xlm.tokenizer import Tokenizer


def world_size() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """This process's device: one GPU per process (LOCAL_RANK) on CUDA; the CPU is shared."""
    if device.type == "cuda" and world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """torchrun's process group for the duration of the block: NCCL for CUDA tensors, gloo otherwise."""
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """End a torchrun process now, with exit status `code`: flush stdout and stderr, then `os._exit`, skipping the
    interpreter's shutdown. The `xlm` command calls it under torchrun once its work is done and its files closed.

    Why: torch 2.13 keeps a gloo process group alive past `destroy_process_group` once an optimizer has stepped
    or DistributedDataParallel has wrapped a module, so gloo's worker threads run on while the interpreter shuts
    down. A worker releasing the last tensors of a collective (a barrier keeps the collectives before it) then
    needs the interpreter, whose shutdown ends the thread inside a C++ destructor: std::terminate, and the
    process dies of SIGABRT after finishing its work (here about one torchrun training run in a hundred).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def encode_lines(tokenizer: Tokenizer, lines: Sequence[str], lang: str) -> list[list[int]]:
    """Every line's ids, on every process; process r tokenizes lines r, r+N, ...

    An error on one process (a tokenizer error) is raised on all of them, so that none waits forever.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        mine: tuple[list | None, str | None] = (tokenizer.encode_lines(list(lines[rank::world]), lang), None)
    except XLMError as err:
        mine = (None, str(err))
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    errors = [error for _, error in parts if error is not None]
    if errors:
        raise XLMError(errors[0])
    sequences: list = [None] * len(lines)
    for r, (ids, _) in enumerate(parts):
        sequences[r::world] = ids
    return sequences


def distributed_corpus_perplexity(
    model: XLM,
    sequences: Sequence[Sequence[int]],
    lang: int | None,
    *,
    max_batch_tokens: int = 4096,
    allow_mlm: bool = False,
) -> Perplexity | None:
    """`xlm.scoring.corpus_perplexity` over the process group: the result on rank 0, None on the others.

    Batch b of the single-process run goes to process b mod N; rank 0 puts the gathered scores in input order.
    """
    check_corpus(model, sequences, allow_mlm)
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = [
        scored
        for batch in length_batches(sequences, max_batch_tokens)[rank::world]
        for scored in score_batch(model, sequences, batch, lang, allow_mlm=allow_mlm)
    ]
    parts: list | None = [None] * world if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    logprobs, tokens = [0.0] * len(sequences), [0] * len(sequences)
    for part in parts:
        for i, logprob, count in part:
            logprobs[i], tokens[i] = logprob, count
    return Perplexity.of_sentences(logprobs, tokens)


__all__ = [
    "distributed_corpus_perplexity",
    "encode_lines",
    "end_process",
    "local_device",
    "process_group",
    "world_size",
]
