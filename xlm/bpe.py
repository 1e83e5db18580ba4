"""Byte-pair encoding of one Moses word into subword pieces, as XLM (fastBPE) and transformers do it.

A word is a sequence of characters with the end-of-word marker glued to the last one:

    "lower"  ->  l o w e r</w>

Merge rules come ranked, one per line of `merges.txt` (= fastBPE's codes file). Repeatedly take the adjacent
pair with the lowest rank and merge every non-overlapping occurrence of it, left to right, until no adjacent
pair has a rank:

    l o w e r</w>  --(rank 3: "e r</w>")-->  l o w er</w>  --(rank 7: "l o")-->  lo w er</w>  --> ...

The result is a tuple of pieces, the last one ending in `</w>`; pieces are then looked up in `vocab.json`.

Two interchangeable backends, with a per-word cache in front (text repeats words, so most lookups hit):
- `PythonBPE`: the reference, exact and dependency-free.
- `FastBPE`: the same merges run by the `fastBPE` C++ extension (`pip install xlm[fast]`, docs/tokenizer.md).
  It is given no vocabulary file, on purpose: with one, fastBPE un-merges pieces missing from the vocabulary,
  which transformers never does. Without one its output is identical (tested on the real enfr vocabulary).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from xlm.errors import TokenizerError

END_OF_WORD = "</w>"
# fastBPE writes a non-final piece as `piece@@`.
FASTBPE_CONTINUATION = "@@"
# A cache holds at most this many words; when full it starts again empty (bounds memory on huge corpora).
CACHE_LIMIT = 1 << 18

Merge = tuple[str, str]


def parse_merges(text: str, source: str = "merges") -> list[Merge]:
    """Merge rules from the text of `merges.txt` / a fastBPE codes file, in rank order.

    Lines are `left right [count]`: only the first two fields matter (the count is fastBPE's statistic).
    Blank lines are skipped. Two transformers quirks are deliberately *not* copied:
    - transformers drops the last line of a file that does not end in a newline (`read().split("\\n")[:-1]`);
      here every line counts, and the files we write always end in a newline so transformers reads them whole.
    - transformers silently keeps a one-field line as a rule that can never apply; here it is an error.
    A pair listed twice keeps its later rank, as in transformers (`dict(zip(merges, range(...)))`).
    """
    merges = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise TokenizerError(f"{source}, line {line_number}: a merge needs two symbols, got {line!r}")
        merges.append((fields[0], fields[1]))
    return merges


def read_merges(path: str | Path) -> list[Merge]:
    """`parse_merges` of a file, with a one-line error if it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokenizerError(f"cannot read merges file {path}: {error}") from None
    return parse_merges(text, source=str(path))


class _CachedBPE:
    """Shared part of the backends: rank table, per-word cache, pickling without the cache."""

    def __init__(self, merges: Iterable[Merge]):
        # A pair listed twice keeps its later rank (later entries overwrite), as in transformers.
        self.ranks: dict[Merge, int] = {pair: rank for rank, pair in enumerate(merges)}
        self._cache: dict[str, tuple[str, ...]] = {}

    @property
    def merges(self) -> list[Merge]:
        """The rules in rank order, each once (what `merges.txt` should contain)."""
        return sorted(self.ranks, key=self.ranks.__getitem__)

    def segment(self, word: str) -> tuple[str, ...]:
        """Pieces of one non-empty word, e.g. `"lower"` -> `("low", "er</w>")`."""
        pieces = self._cache.get(word)
        if pieces is None:
            if not word:
                raise TokenizerError("BPE needs a non-empty word")
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            pieces = self._cache[word] = self._merge(word)
        return pieces

    def _merge(self, word: str) -> tuple[str, ...]:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        return {"merges": self.merges}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["merges"])


class PythonBPE(_CachedBPE):
    """The reference backend: the merge loop written out in Python."""

    name = "python"

    def _merge(self, word: str) -> tuple[str, ...]:
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(itertools.pairwise(symbols), key=self._rank)
            if pair not in self.ranks:
                break
            symbols = _merge_pair(symbols, pair)
        return tuple(symbols)

    def _rank(self, pair: Merge) -> float:
        return self.ranks.get(pair, float("inf"))


def _merge_pair(symbols: list[str], pair: Merge) -> list[str]:
    """Merge every non-overlapping occurrence of `pair`, left to right: (a a a) with (a, a) -> (aa a)."""
    first, second = pair
    merged = []
    i = 0
    while i < len(symbols):
        if symbols[i] == first and i + 1 < len(symbols) and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class FastBPE(_CachedBPE):
    """The optional C++ backend. fastBPE prints two "Loading codes" lines to stdout when it starts."""

    name = "fastbpe"

    def __init__(self, merges: Iterable[Merge]):
        super().__init__(merges)
        try:
            import fastBPE
        except ImportError:
            raise TokenizerError(
                "bpe_backend='fastbpe' needs the fastBPE package, which is not installed: "
                "pip install -U setuptools wheel cython && pip install --no-build-isolation fastBPE"
            ) from None
        # fastBPE reads its rules from a codes file (`left right count`; the count is ignored) and keeps them
        # in memory, so a temporary file written from our deduplicated rank table is enough.
        with tempfile.TemporaryDirectory() as directory:
            codes = Path(directory) / "codes"
            codes.write_text("".join(f"{left} {right} 0\n" for left, right in self.merges), encoding="utf-8")
            self._fastbpe = fastBPE.fastBPE(str(codes))

    def _merge(self, word: str) -> tuple[str, ...]:
        # One word per call: fastBPE splits its input on spaces, and Moses words contain none, so its output
        # `lo@@ w@@ er` is unambiguous even for a word that itself ends in "@@".
        *continued, last = self._fastbpe.apply([word])[0].split(" ")
        return (*(piece.removesuffix(FASTBPE_CONTINUATION) for piece in continued), last + END_OF_WORD)


BACKENDS = {"python": PythonBPE, "fastbpe": FastBPE}


def make_bpe(merges: Sequence[Merge], backend: str = "python") -> _CachedBPE:
    """The BPE backend named `backend` ("python" or "fastbpe") over `merges`."""
    if backend not in BACKENDS:
        raise TokenizerError(f"unknown BPE backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[backend](merges)


def fastbpe_installed() -> bool:
    """Whether the optional fastBPE extension can be imported."""
    try:
        import fastBPE  # noqa: F401
    except ImportError:
        return False
    return True
