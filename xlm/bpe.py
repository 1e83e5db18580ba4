"""Byte-pair encoding of one Moses word into subword pieces, as XLM (fastBPE) and transformers do it.

A word is a sequence of characters with the end-of-word marker glued to the last one:

    "lower"  ->  l o w e r</w>

Merge rules come ranked, one per line of `merges.txt` (= fastBPE's codes file). Repeatedly take the adjacent
pair with the lowest rank and merge every non-overlapping occurrence of it, left to right, until no adjacent
pair has a rank:

    l o w e r</w>  --(rank 3: "e r</w>")-->  l o w er</w>  --(rank 7: "l o")-->  lo w er</w>  --> ...

The result is a tuple of pieces, the last one ending in `</w>`; pieces are then looked up in `vocab.json`.

With a vocabulary (`vocabulary=`, fastBPE's `applybpe OUT IN CODES VOCAB`), a merged piece that is missing
from it is split back into the two pieces it was merged from, recursively, until every piece is in the vocabulary
or is a single character:

    Rawalpinx  ->  Rawalpin x</w>  --("Rawalpin" missing: Raw + alpin)-->  Raw alpin x</w>

XLM made its training data without the vocabulary and its valid/test data with it; transformers never uses it.

Two interchangeable backends, with a per-word cache in front (text repeats words, so most lookups hit):
- `PythonBPE`: the reference, exact and dependency-free.
- `FastBPE`: the same merges (and vocabulary, if given) run by the `fastBPE` C++ extension (`pip install
  xlm[fast]`, docs/tokenizer.md). Its output is identical (tested on the real enfr vocabulary).
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


def piece_from_fastbpe(token: str) -> str:
    """A fastBPE token in transformers' notation: `mon@@` -> `mon` (continues a word), `chat` -> `chat</w>`.

    Only a final `@@` marks a continuing piece, as in fastBPE itself, which looks a piece up as `piece@@` if it
    continues a word and as `piece` if it ends one: `a@@b` is a word-final piece, `a@@b</w>`.
    """
    if token.endswith(FASTBPE_CONTINUATION):
        return token.removesuffix(FASTBPE_CONTINUATION)
    return token + END_OF_WORD


def piece_to_fastbpe(piece: str) -> str:
    """The inverse of `piece_from_fastbpe`: `mon` -> `mon@@`, `chat</w>` -> `chat`."""
    if piece.endswith(END_OF_WORD):
        return piece.removesuffix(END_OF_WORD)
    return piece + FASTBPE_CONTINUATION


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


class BPE:
    """What both backends share: the rank table, the per-word cache, pickling without the cache.

    vocabulary: the pieces (transformers' notation, special tokens excluded) that un-merging keeps; None
        (or empty) merges only, as transformers does and as XLM made its training data.
    """

    def __init__(self, merges: Iterable[Merge], vocabulary: Iterable[str] | None = None):
        # A pair listed twice keeps its later rank (later entries overwrite), as in transformers.
        self.ranks: dict[Merge, int] = {pair: rank for rank, pair in enumerate(merges)}
        # An empty vocabulary limits nothing, as in fastBPE (which then skips the step).
        self.vocabulary = frozenset(vocabulary or ()) or None
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
        return {"merges": self.merges, "vocabulary": self.vocabulary}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["merges"], state["vocabulary"])


class PythonBPE(BPE):
    """The reference backend: the merge loop written out in Python."""

    name = "python"

    def __init__(self, merges: Iterable[Merge], vocabulary: Iterable[str] | None = None):
        super().__init__(merges, vocabulary)
        # Each merge result -> the pair it was made from; a result made twice keeps its later pair, as fastBPE.
        self._merged_from = (
            {left + right: (left, right) for left, right in self.merges} if self.vocabulary is not None else {}
        )

    def _merge(self, word: str) -> tuple[str, ...]:
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(itertools.pairwise(symbols), key=self._rank)
            if pair not in self.ranks:
                break
            symbols = _merge_pair(symbols, pair)
        if self.vocabulary is not None:
            return tuple(kept for piece in symbols for kept in self._unmerge(piece))
        return tuple(symbols)

    def _unmerge(self, piece: str) -> list[str]:
        """`piece` if it is in the vocabulary or cannot be split, else its two halves, each un-merged in turn."""
        if piece in self.vocabulary or piece not in self._merged_from:
            return [piece]
        left, right = self._merged_from[piece]
        return [*self._unmerge(left), *self._unmerge(right)]

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


class FastBPE(BPE):
    """The optional C++ backend. fastBPE prints two "Loading codes" lines to stdout when it starts."""

    name = "fastbpe"

    def __init__(self, merges: Iterable[Merge], vocabulary: Iterable[str] | None = None):
        super().__init__(merges, vocabulary)
        try:
            import fastBPE
        except ImportError:
            raise TokenizerError(
                "bpe_backend='fastbpe' needs the fastBPE package, which is not installed: "
                "pip install -U setuptools wheel cython && pip install --no-build-isolation fastBPE"
            ) from None
        # fastBPE reads its rules from a codes file (`left right count`; the count is ignored) and its vocabulary
        # from a `token count` file, and keeps both in memory, so temporary files written from ours are enough.
        with tempfile.TemporaryDirectory() as directory:
            codes = Path(directory) / "codes"
            codes.write_text("".join(f"{left} {right} 0\n" for left, right in self.merges), encoding="utf-8")
            vocab = ""
            if self.vocabulary is not None:
                vocab = Path(directory) / "vocab"
                vocab.write_text("".join(f"{piece_to_fastbpe(piece)} 0\n" for piece in self.vocabulary), "utf-8")
            self._fastbpe = fastBPE.fastBPE(str(codes), str(vocab))

    def _merge(self, word: str) -> tuple[str, ...]:
        # One word per call: fastBPE splits its input on spaces, and Moses words contain none, so its output
        # `lo@@ w@@ er` is unambiguous even for a word that itself ends in "@@".
        if " " in word:
            raise TokenizerError(f"fastBPE cannot segment a word that contains a space: {word!r}")
        *continued, last = self._fastbpe.apply([word])[0].split(" ")
        return (*(piece.removesuffix(FASTBPE_CONTINUATION) for piece in continued), last + END_OF_WORD)


BACKENDS = {"python": PythonBPE, "fastbpe": FastBPE}


def make_bpe(merges: Sequence[Merge], backend: str = "python", vocabulary: Iterable[str] | None = None) -> BPE:
    """The BPE backend named `backend` ("python" or "fastbpe") over `merges`, un-merging to `vocabulary` if given."""
    if backend not in BACKENDS:
        raise TokenizerError(f"unknown BPE backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[backend](merges, vocabulary)


def fastbpe_installed() -> bool:
    """Whether the optional fastBPE extension can be imported."""
    try:
        import fastBPE  # noqa: F401
    except ImportError:
        return False
    return True
