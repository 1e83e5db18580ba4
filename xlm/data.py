"""Training data as XLM saw it: binarized corpora, and the batches the original code builds from them.

Two stages, as in facebookresearch/XLM (preprocess.py, then xlm/data/dataset.py):

1. `prepare` (`xlm prepare`) tokenizes text files once, one sentence per line, with `xlm.Tokenizer`'s "original"
   preset, in several processes, and writes each corpus as a flat array of ids (the smallest unsigned dtype
   the vocabulary fits: uint16 for 64,139 pieces) plus sentence offsets, with a small JSON header. Reading a
   prepared corpus is a memory map: no tokenization, no copy.

       DIR/train/header.json                 format version, vocabulary hash, languages, counts, dtype
       DIR/train/en.ids  DIR/train/en.offsets            monolingual: ids (N,), offsets (n+1,) int64
       DIR/train/en-fr.en.ids  ...en-fr.fr.offsets       parallel: two line-aligned corpora

   Sentences are stored without `</s>`; the batchers add the separators as the original does.

2. The batches (each a `TrainBatch` of (B, T) tensors):
   - `StreamBatches`, for CLM and MLM (the original's StreamDataset): the corpus as one token stream with `</s>`
     after every sentence, laid out as `batch_size` parallel streams, each starting with `</s>`; a batch is the
     next `bptt` tokens of every stream, so rows span sentences and have no padding.
   - `PairBatches`, for TLM (the original's ParallelDataset + concat_batches): rows `</s> a </s> </s> b </s>`,
     languages per position, positions restarting at 0 where the second sentence starts, right-padded.
   Both are deterministic from a seed and the number of batches drawn, and save their position
   (`state_dict`) for an exact resume. `sampling_probabilities` is the paper's language sampling.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xlm.convert import atomic_directory
from xlm.errors import DataError, OneLineParser, XLMError
from xlm.tokenizer import SPECIAL_TOKENS, UNK_ID, Tokenizer

FORMAT = "xlm-prepared"
FORMAT_VERSION = 1
HEADER_FILE = "header.json"
BLOCK_LINES = 100_000  # lines tokenized per call: bounds the memory of a large corpus


# --- Prepared corpora ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # arrays/tensors: no field-wise ==
class Corpus:
    """One language's sentences: ids (N,) of all sentences back to back, offsets (n+1,) int64.

    Sentence i is ids[offsets[i] : offsets[i + 1]], without `</s>` framing; it may be empty (a blank line).
    """

    lang: str
    ids: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_sentences(cls, lang: str, sentences: Sequence[Sequence[int]]) -> Corpus:
        """A small in-memory corpus, e.g. for tests: lists of ids -> flat ids and offsets."""
        lengths = [len(s) for s in sentences]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        ids = np.fromiter(itertools.chain.from_iterable(sentences), dtype=np.int64, count=int(offsets[-1]))
        return cls(lang, ids, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """(n,) int64: the number of ids of each sentence."""
        return np.diff(self.offsets)

    def sentence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def stream(self, eos_id: int) -> np.ndarray:
        """All sentences, each followed by `</s>`: the original's binarized layout, (N + n,)."""
        out = np.full(self.n_tokens + len(self), eos_id, dtype=self.ids.dtype)
        is_token = np.ones(len(out), dtype=bool)  # one byte per slot: no index array as long as the corpus
        is_token[self.offsets[1:] + np.arange(len(self))] = False  # sentence i's </s> follows i earlier ones
        out[is_token] = self.ids
        return out


@dataclass(frozen=True, eq=False)  # arrays/tensors: no field-wise ==
class ParallelCorpus:
    """Two line-aligned corpora: `first.sentence(i)` (in langs[0]) translates `second.sentence(i)`."""

    langs: tuple[str, str]
    first: Corpus
    second: Corpus

    def __len__(self) -> int:
        return len(self.first)

    def reversed(self) -> ParallelCorpus:
        """The same pairs, second language first (the original's `fr-en` step on `en-fr` data)."""
        return ParallelCorpus((self.langs[1], self.langs[0]), self.second, self.first)


@dataclass(frozen=True, eq=False)  # arrays/tensors: no field-wise ==
class PreparedData:
    """One split of a prepared directory: its monolingual corpora and pairs, memory-mapped."""

    split: str
    header: dict
    mono: dict[str, Corpus]
    para: dict[tuple[str, str], ParallelCorpus]

    @property
    def vocab_size(self) -> int:
        return self.header["vocab_size"]

    def token_counts(self) -> np.ndarray:
        """(V,) int64: how often each id occurs in all corpora of the split (MLM's frequency smoothing)."""
        corpora = [*self.mono.values(), *(c for p in self.para.values() for c in (p.first, p.second))]
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for corpus in corpora:
            for start in range(0, corpus.n_tokens, 1 << 24):  # bincount copies to int64: bound that copy
                counts += np.bincount(corpus.ids[start : start + (1 << 24)], minlength=self.vocab_size)
        return counts


def vocab_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the vocabulary's pieces in id order: what the ids of a prepared corpus mean."""
    pieces = sorted(tokenizer.vocab, key=tokenizer.vocab.__getitem__)
    return hashlib.sha256("\n".join(pieces).encode("utf-8")).hexdigest()


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id (the original: uint16 below 65,536)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise DataError(f"a vocabulary of {vocab_size} pieces is too large")


# --- Writing ------------------------------------------------------------------------------------------------


def prepare(
    out_dir: str | Path,
    tokenizer: Tokenizer,
    *,
    mono: Mapping[str, str | Path] | None = None,
    para: Mapping[tuple[str, str], tuple[str | Path, str | Path]] | None = None,
    split: str = "train",
    workers: int = 1,
    force: bool = False,
) -> Path:
    """Tokenize and binarize text files into `out_dir/split/`; returns `out_dir` (for `open_prepared`).

    mono: language -> text file, one sentence per line. para: (lang1, lang2) -> two line-aligned files.
    tokenizer: loaded with preset="original" (what XLM saw: its lowercasing, no framing); literal special
        tokens in the text are dropped, except `<unk>`, as the original's preprocessing does.
    workers: tokenizer processes. force: replace an existing `out_dir/split`.
    The split directory appears complete or not at all (written aside, then renamed).
    """
    mono, para, out_dir = dict(mono or {}), dict(para or {}), Path(out_dir)
    _check_sources(out_dir, tokenizer, mono, para, split, force)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "split": split,
        "vocab_hash": vocab_hash(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "dtype": ids_dtype(tokenizer.vocab_size).name,
        "lowercase_and_remove_accents": tokenizer.lowercase_and_remove_accents,
        "languages": sorted({*mono, *(lang for pair in para for lang in pair)}),
        "mono": {},
        "para": {},
    }
    with atomic_directory(out_dir / split, replace=force) as tmp:
        for lang, path in mono.items():
            header["mono"][lang] = _write_corpus(tmp / lang, tokenizer, lang, Path(path), workers)
        for (l1, l2), (path1, path2) in para.items():
            name = f"{l1}-{l2}"
            header["para"][name] = {
                l1: _write_corpus(tmp / f"{name}.{l1}", tokenizer, l1, Path(path1), workers),
                l2: _write_corpus(tmp / f"{name}.{l2}", tokenizer, l2, Path(path2), workers),
            }
        (tmp / HEADER_FILE).write_text(json.dumps(header, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir


def _check_sources(out_dir: Path, tokenizer: Tokenizer, mono: dict, para: dict, split: str, force: bool) -> None:
    """Everything that can be checked before tokenizing: names, languages, files, line counts, the directory."""
    if not mono and not para:
        raise DataError("nothing to prepare: give monolingual files and/or parallel pairs")
    _check_name(split, "split")
    if tokenizer.preset != "original":
        raise DataError("prepare tokenizes as XLM's training did: load the tokenizer with preset='original'")
    for lang in [*mono, *(lang for pair in para for lang in pair)]:
        _check_language(tokenizer, lang)
    for (l1, l2), (path1, path2) in para.items():
        if l1 == l2:
            raise DataError(f"a parallel pair needs two different languages, got {l1}-{l2}")
        n1, n2 = _count_lines(path1), _count_lines(path2)
        if n1 != n2:
            raise DataError(f"{path1} has {n1} lines but {path2} has {n2}: parallel files must be line-aligned")
    for path in mono.values():
        _count_lines(path)  # a missing, empty or non-UTF-8 file fails now, not after hours of tokenizing
    if (out_dir / split).exists() and not force:
        raise DataError(f"{out_dir / split} already exists; pass force=True (--force) to replace it")
    for sibling in sorted(out_dir.glob(f"*/{HEADER_FILE}")) if out_dir.is_dir() else []:
        if sibling.parent.name != split and _read_header(sibling.parent)["vocab_hash"] != vocab_hash(tokenizer):
            raise DataError(f"{sibling.parent} was prepared with another vocabulary: one directory, one vocabulary")


def _write_corpus(stem: Path, tokenizer: Tokenizer, lang: str, path: Path, workers: int) -> dict:
    """Tokenize `path` block by block into stem.ids / stem.offsets; returns the corpus' header entry."""
    dtype = ids_dtype(tokenizer.vocab_size)
    n_sentences = n_tokens = n_dropped = 0
    with (
        _open_text(path) as text,
        open(f"{stem}.ids", "wb") as ids_file,
        open(f"{stem}.offsets", "wb") as offsets_file,
    ):
        np.zeros(1, dtype=np.int64).tofile(offsets_file)
        while block := list(itertools.islice(text, BLOCK_LINES)):
            encoded = _encode_block(tokenizer, block, lang, workers, path)
            flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            # The original's preprocessing drops special tokens found in the text (all but <unk>).
            keep = (flat >= len(SPECIAL_TOKENS)) | (flat == UNK_ID)  # (tokens in block,)
            sentence_of_token = np.repeat(np.arange(len(encoded)), lengths)
            lengths = np.bincount(sentence_of_token[keep], minlength=len(encoded))
            flat[keep].astype(dtype).tofile(ids_file)
            (n_tokens + np.cumsum(lengths)).astype(np.int64).tofile(offsets_file)
            n_sentences, n_tokens = n_sentences + len(encoded), n_tokens + int(lengths.sum())
            n_dropped += int((~keep).sum())
    if n_tokens == 0:
        raise DataError(f"{path}: no tokens in {n_sentences} lines: an empty corpus")
    return {"source": str(path), "sentences": n_sentences, "tokens": n_tokens, "dropped_special_tokens": n_dropped}


def _encode_block(tokenizer: Tokenizer, lines: list[str], lang: str, workers: int, path: Path) -> list[list[int]]:
    try:
        return tokenizer.encode_lines(lines, lang, add_special_tokens=False, workers=workers)
    except XLMError as err:
        raise DataError(f"{path}: {err}") from None


def _open_text(path: Path):
    """A text file read line by line, lines split at \\n only (a stray \\r stays in its line)."""
    try:
        return open(path, encoding="utf-8", newline="\n")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None


def _count_lines(path: str | Path) -> int:
    """Lines of a UTF-8 text file; a missing, unreadable, non-UTF-8 or empty file is a DataError."""
    try:
        with _open_text(Path(path)) as f:
            count = sum(1 for _ in f)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason})") from None
    if count == 0:
        raise DataError(f"{path} is empty: nothing to prepare")
    return count


def _check_language(tokenizer: Tokenizer, lang: str) -> None:
    _check_name(lang, "language")
    if tokenizer.lang2id is not None and lang not in tokenizer.lang2id:
        raise DataError(f"unknown language {lang!r}; this tokenizer knows: {', '.join(tokenizer.languages)}")


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise DataError(f"a {what} name is letters, digits and _ (such as 'en' or 'train'), got {name!r}")


# --- Reading ------------------------------------------------------------------------------------------------


def open_prepared(data_dir: str | Path, split: str, vocab_hash: str | None) -> PreparedData:
    """Memory-map `data_dir/split/` as written by `prepare`, checking it before any training reads it.

    vocab_hash: the `vocab_hash` of the model's tokenizer; a corpus prepared with another vocabulary is refused
        (None skips this check, for inspecting a directory). The arrays are checked against the header: size
        (a truncated file), offsets (0 first, non-decreasing, the token count last), ids inside the vocabulary.
    """
    directory = Path(data_dir) / split
    header = _read_header(directory)
    if vocab_hash is not None and header["vocab_hash"] != vocab_hash:
        raise DataError(
            f"{directory} was prepared with another vocabulary (hash {header['vocab_hash'][:12]}, "
            f"this tokenizer's {vocab_hash[:12]}): prepare it again with this tokenizer"
        )
    mono = {lang: _read_corpus(directory / lang, lang, entry, header) for lang, entry in header["mono"].items()}
    para = {}
    for name, entries in header["para"].items():
        l1, l2 = name.split("-")
        first = _read_corpus(directory / f"{name}.{l1}", l1, entries[l1], header)
        second = _read_corpus(directory / f"{name}.{l2}", l2, entries[l2], header)
        if len(first) != len(second):
            raise DataError(f"{directory}: {name} has {len(first)} and {len(second)} sentences: not line-aligned")
        para[(l1, l2)] = ParallelCorpus((l1, l2), first, second)
    return PreparedData(split, header, mono, para)


def _read_header(directory: Path) -> dict:
    path = directory / HEADER_FILE
    if not path.is_file():
        raise DataError(f"{directory} is not a prepared split (no {HEADER_FILE}): run `xlm prepare` first")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read: {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path} is not an xlm prepared-data header")
    if header.get("version") != FORMAT_VERSION:
        raise DataError(f"{path} has format version {header.get('version')}; this xlm reads {FORMAT_VERSION}")
    missing = [k for k in ("vocab_hash", "vocab_size", "dtype", "mono", "para") if k not in header]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}")
    names = [*header["mono"], *(lang for pair in header["para"] for lang in pair.split("-"))]
    if not all(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_]+", name) for name in names):
        raise DataError(f"{path} names a corpus that is not a language or a pair of languages")
    return header


def _read_corpus(stem: Path, lang: str, entry: dict, header: dict) -> Corpus:
    ids = _map_array(Path(f"{stem}.ids"), np.dtype(header["dtype"]), entry["tokens"])
    offsets = _map_array(Path(f"{stem}.offsets"), np.dtype(np.int64), entry["sentences"] + 1)
    if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
        raise DataError(f"{stem}.offsets is corrupt: offsets must rise from 0 to the token count {len(ids)}")
    if len(ids) and int(ids.max()) >= header["vocab_size"]:
        raise DataError(f"{stem}.ids is corrupt: id {int(ids.max())} is outside the vocabulary")
    return Corpus(lang, ids, offsets)


def _map_array(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only memory map of `count` values, after checking that the file holds exactly that many."""
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path} is missing: prepare the split again") from None
    if size != count * dtype.itemsize:
        raise DataError(f"{path} has {size} bytes, the header says {count * dtype.itemsize}: truncated or corrupt")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


# --- Batches ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # arrays/tensors: no field-wise ==
class TrainBatch:
    """Model inputs for one step, all (B, T) tensors, passed as `model(b.input_ids, b.langs, positions=..., ...)`.

    input_ids       long   token ids (`<pad>` after a row's end)
    langs           long   language id of every position (TLM: the first sentence's, then the second's)
    positions       long   position-embedding index (TLM: restarts at 0 where the second sentence starts)
    attention_mask  bool   True for a real token, False for padding
    labels          long   MLM/TLM only, set by `xlm.objectives.mask_batch`: the original id where a position is
                           predicted, -100 elsewhere (transformers' and cross_entropy's ignore_index)
    """

    input_ids: Tensor
    langs: Tensor
    positions: Tensor
    attention_mask: Tensor
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.size(0)

    def rows(self, start: int, stop: int) -> TrainBatch:
        """Rows start..stop-1: one process's share of a global batch, or one accumulation micro-batch."""
        return TrainBatch(**{name: None if t is None else t[start:stop] for name, t in self._tensors().items()})

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(**{name: None if t is None else t.to(device) for name, t in self._tensors().items()})

    def _tensors(self) -> dict[str, Tensor | None]:
        names = ("input_ids", "langs", "positions", "attention_mask", "labels")
        return {name: getattr(self, name) for name in names}


class StreamBatches:
    """CLM/MLM batches as the original's StreamDataset: `bptt`-token windows of `batch_size` parallel streams.

    The corpus, every sentence followed by `</s>`, is cut into batch_size equal streams (the first one padded
    at its start with `</s>` up to a whole number of windows), and each stream starts with `</s>`:

        stream j = </s> w w w </s> w w </s> w ...        (n_windows * bptt tokens used per stream)
        window i = columns i*bptt .. (i+1)*bptt - 1 of every stream: (batch_size, bptt), no padding

    As in the original, the `</s>` prepended to each stream pushes the stream's last token out of the last
    window. Each epoch visits every window once in a random order drawn from (seed, epoch).
    """

    def __init__(
        self, corpus: Corpus, *, lang_id: int, eos_id: int, batch_size: int = 32, bptt: int = 256, seed: int = 0
    ):
        if batch_size < 1 or bptt < 2:
            raise DataError(f"stream batches need batch_size >= 1 and bptt >= 2, got {batch_size} and {bptt}")
        if len(corpus) == 0:
            raise DataError(f"the {corpus.lang} corpus has no sentences: no stream batches")
        stream = corpus.stream(eos_id)  # (N + n,)
        self.n_tokens = len(stream)  # ids and </s> separators
        self.n_windows = math.ceil(len(stream) / (batch_size * bptt))
        length = self.n_windows * bptt  # tokens per stream
        fill = batch_size * length - len(stream)  # </s> before the corpus, to fill the last window
        self.streams = np.full((batch_size, length + 1), eos_id, dtype=stream.dtype)  # column 0: the leading </s>
        for j in range(batch_size):  # stream j: slots j*length .. (j+1)*length - 1 of fill + corpus
            start, stop = max(j * length - fill, 0), max((j + 1) * length - fill, 0)
            self.streams[j, 1 + length - (stop - start) :] = stream[start:stop]
        self.lang_id, self.batch_size, self.bptt, self.seed = lang_id, batch_size, bptt, seed
        self.epoch, self.index = 0, 0
        self._order, self._order_epoch = np.empty(0, dtype=np.int64), -1  # this epoch's window order, once drawn

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n_windows

    def window(self, i: int) -> TrainBatch:
        """Window i: tokens i*bptt .. (i+1)*bptt - 1 of every stream, positions 0..bptt-1, one language."""
        ids = torch.from_numpy(self.streams[:, i * self.bptt : (i + 1) * self.bptt].astype(np.int64))  # (B, bptt)
        positions = torch.arange(self.bptt).repeat(len(ids), 1)  # (B, bptt)
        return TrainBatch(ids, torch.full_like(ids, self.lang_id), positions, torch.ones_like(ids, dtype=torch.bool))

    def next_batch(self) -> TrainBatch:
        """The next global batch: deterministic from the seed and the number of batches drawn so far."""
        if self.index == self.n_windows:
            self.epoch, self.index = self.epoch + 1, 0
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = _epoch_permutation(self.seed, self.epoch, self.n_windows), self.epoch
        self.index += 1
        return self.window(int(self._order[self.index - 1]))

    def eval_batches(self) -> Iterator[TrainBatch]:
        """Every window once, in order (the original's evaluation iterator); leaves the position unchanged."""
        return (self.window(i) for i in range(self.n_windows))

    def state_dict(self) -> dict:
        return {"kind": "stream", "seed": self.seed, "epoch": self.epoch, "index": self.index, "shape": self._shape()}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, "stream", self._shape())
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]
        self._order_epoch = -1

    def _shape(self) -> list[int]:
        return [self.n_tokens, self.batch_size, self.bptt]


class PairBatches:
    """TLM batches as the original's ParallelDataset: pairs of sentences concatenated into one row each.

        row:        </s> a1 .. an </s> </s> b1 .. bm </s> <pad> ..
        positions:  0    1  .. n  n+1  0    1  .. m  m+1  0     ..
        langs:      l1   l1 .. l1 l1   l2   l2 .. l2 l2   l2 ..

    Pairs with an empty side or a side longer than `max_len` ids are left out (the original's train-split
    filter). Each epoch: the pairs in a random order, sorted by length (`group_by_size`, a stable sort, so
    equal lengths stay shuffled), cut into batches of `batch_size` pairs (np.array_split, as the original: sizes
    differ by at most one) or of about `tokens_per_batch` tokens, and the batches visited in a random order.
    """

    def __init__(
        self,
        corpus: ParallelCorpus,
        *,
        lang_ids: tuple[int, int],
        eos_id: int,
        pad_id: int,
        batch_size: int = 32,
        max_len: int = 100,
        tokens_per_batch: int = -1,
        group_by_size: bool = True,
        seed: int = 0,
    ):
        if batch_size < 1 or max_len < 1:
            raise DataError(f"pair batches need batch_size >= 1 and max_len >= 1, got {batch_size} and {max_len}")
        self.corpus, self.lang_ids, self.eos_id, self.pad_id = corpus, tuple(lang_ids), eos_id, pad_id
        lengths1, lengths2 = corpus.first.lengths, corpus.second.lengths
        kept = (lengths1 > 0) & (lengths2 > 0) & (lengths1 <= max_len) & (lengths2 <= max_len)
        self.pairs = np.flatnonzero(kept)  # indices of the pairs used
        if len(self.pairs) == 0:
            raise DataError(f"no {'-'.join(corpus.langs)} pair has both sides of 1..{max_len} tokens")
        self.row_lengths = lengths1 + lengths2 + 4  # four </s> per row
        self.batch_size, self.max_len, self.tokens_per_batch = batch_size, max_len, tokens_per_batch
        self.group_by_size, self.seed = group_by_size, seed
        self.epoch, self.index = 0, 0
        self._batches = self._epoch_batches(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def next_batch(self) -> TrainBatch:
        """The next global batch: deterministic from the seed and the number of batches drawn so far."""
        if self.index == len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        self.index += 1
        return self.batch(self._batches[self.index - 1])

    def batch(self, pair_indices: Sequence[int]) -> TrainBatch:
        """The rows of these pairs (indices into the corpus)."""
        first = [self.corpus.first.sentence(i) for i in pair_indices]
        second = [self.corpus.second.sentence(i) for i in pair_indices]
        return concat_pairs(first, second, self.lang_ids, eos_id=self.eos_id, pad_id=self.pad_id)

    def eval_batches(self) -> Iterator[TrainBatch]:
        """Every kept pair once, in corpus order, batch_size pairs a batch; leaves the position unchanged."""
        return (self.batch(self.pairs[i : i + self.batch_size]) for i in range(0, len(self.pairs), self.batch_size))

    def state_dict(self) -> dict:
        return {"kind": "pairs", "seed": self.seed, "epoch": self.epoch, "index": self.index, "shape": self._shape()}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, "pairs", self._shape())
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]
        self._batches = self._epoch_batches(self.epoch)

    def _shape(self) -> list[int]:
        return [len(self.pairs), self.batch_size, self.max_len, self.tokens_per_batch, int(self.group_by_size)]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = self.pairs[rng.permutation(len(self.pairs))]
        if self.group_by_size:
            order = order[np.argsort(self.row_lengths[order], kind="stable")]
        if self.tokens_per_batch < 0:
            batches = np.array_split(order, math.ceil(len(order) / self.batch_size))
        else:  # cut where the running token count crosses a multiple of tokens_per_batch
            batch_of_pair = np.cumsum(self.row_lengths[order]) // self.tokens_per_batch
            _, starts = np.unique(batch_of_pair, return_index=True)
            batches = np.split(order, starts[1:])
        return [batches[i] for i in rng.permutation(len(batches))]


def concat_pairs(
    first: Sequence[Sequence[int]],
    second: Sequence[Sequence[int]],
    lang_ids: tuple[int, int],
    *,
    eos_id: int,
    pad_id: int,
) -> TrainBatch:
    """TLM rows `</s> a </s> </s> b </s>`, right-padded: the original's concat_batches(reset_positions=True).

    Positions restart at 0 at the second sentence's `</s>`. Padding takes the second language (as in the
    original) and position 0 (the original counts on, which can pass the model's 512 positions when
    max_len > 253); padding is masked out and zeroed, so neither value reaches a real token.
    """
    widths = [len(a) + len(b) + 4 for a, b in zip(first, second, strict=True)]
    B, T = len(widths), max(widths)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    positions = torch.arange(T).repeat(B, 1)  # (B, T)
    langs = torch.full((B, T), lang_ids[0], dtype=torch.long)
    for row, (a, b) in enumerate(zip(first, second, strict=True)):
        start = len(a) + 2  # where the second sentence's </s> sits
        row_ids = np.concatenate([[eos_id], a, [eos_id, eos_id], b, [eos_id]]).astype(np.int64)
        input_ids[row, : widths[row]] = torch.from_numpy(row_ids)
        positions[row, start:] -= start
        positions[row, widths[row] :] = 0
        langs[row, start:] = lang_ids[1]
    attention_mask = torch.arange(T) < torch.tensor(widths)[:, None]  # (B, T)
    return TrainBatch(input_ids, langs, positions, attention_mask)


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _check_state(state: dict, kind: str, shape: list[int]) -> None:
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise DataError(f"the saved data position is not for {kind} batches")
    if list(state.get("shape", [])) != shape:
        raise DataError(
            f"the saved data position is for another corpus or batch shape ({state.get('shape')}, now {shape})"
        )


# --- Language sampling --------------------------------------------------------------------------------------


def sampling_probabilities(counts: Mapping, alpha: float) -> dict:
    """The paper's language sampling (the original's `set_sampling_probs`): q_i = p_i^alpha / sum_j p_j^alpha,
    with p_i = n_i / sum_j n_j.

    counts: language (or pair) -> number of sentences. alpha 0.5 upsamples low-resource languages (the paper);
    alpha 0 is uniform (the original spells it `--lg_sampling_factor -1`, its default); 1 follows the data.
    """
    if alpha < 0:
        raise DataError(f"the sampling exponent (lg_sampling_factor) must be >= 0, got {alpha}")
    if not counts or any(n <= 0 for n in counts.values()):
        raise DataError(f"language sampling needs a positive sentence count per language, got {dict(counts)}")
    total = sum(counts.values())
    weights = {key: (n / total) ** alpha for key, n in counts.items()}
    norm = sum(weights.values())
    return {key: w / norm for key, w in weights.items()}


# --- The `xlm prepare` command ------------------------------------------------------------------------------


def build_parser(prog: str = "xlm prepare") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Tokenize text files (one sentence per line) into binarized corpora for `xlm train`.",
        epilog="example: xlm prepare --tokenizer DIR --out data --mono en train.en --para en fr train.en train.fr",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer files (a checkpoint directory)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the prepared-data directory")
    parser.add_argument("--split", default="train", help="train (default), valid, test, ...")
    parser.add_argument("--mono", nargs=2, action="append", default=[], metavar=("LANG", "FILE"))
    parser.add_argument("--para", nargs=4, action="append", default=[], metavar=("LANG1", "LANG2", "FILE1", "FILE2"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes (all CPUs)")
    parser.add_argument("--force", action="store_true", help="replace the split if it exists")
    parser.add_argument(
        "--check", action="store_true",
        help="write nothing: check the prepared split (against --tokenizer's vocabulary, if given) and list it",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None, prog: str = "xlm prepare") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.tokenizer is None and not args.check:
            raise DataError("--tokenizer is required to prepare (only --check goes without)")
        tokenizer = None if args.tokenizer is None else Tokenizer.from_pretrained(args.tokenizer, preset="original")
        if not args.check:
            mono, para = dict(args.mono), {(l1, l2): (f1, f2) for l1, l2, f1, f2 in args.para}
            if len(mono) != len(args.mono) or len(para) != len(args.para):
                raise DataError("each language and each pair may be given once")
            options = dict(mono=mono, para=para, split=args.split, workers=args.workers, force=args.force)
            prepare(args.out, tokenizer, **options)
        data = open_prepared(args.out, args.split, None if tokenizer is None else vocab_hash(tokenizer))
    except XLMError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    corpora = [*data.mono.values(), *(c for pair in data.para.values() for c in (pair.first, pair.second))]
    names = [*data.mono, *(f"{'-'.join(k)}.{lang}" for k in data.para for lang in k)]
    for name, corpus in zip(names, corpora, strict=True):
        print(f"{args.split}.{name}: {len(corpus):,} sentences, {corpus.n_tokens:,} tokens")
    print(f"{'checked' if args.check else 'wrote'} {Path(args.out) / args.split}")
    return 0
