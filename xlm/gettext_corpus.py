"""An English-French parallel corpus from gettext catalogs: real translations, on every Debian machine.

    python scripts/make_gettext_corpus.py                         # -> data/gettext-enfr/, and a counts table
    python scripts/make_gettext_corpus.py --out /tmp/c --seed 1 --monolingual disjoint

A compiled catalog (`/usr/share/locale/fr/LC_MESSAGES/*.mo`) maps each English message of a program (msgid)
to its French translation (msgstr). Software messages are not prose: they carry format specifiers, keyboard
accelerators, markup, multi-line help screens, and the same message in many catalogs. The rules below turn
them into sentence pairs, each stated once here and applied to both languages alike.

Reading (`read_mo`): the binary .mo format is parsed here, not through `gettext.GNUTranslations`, because the
standard library drops the English plural (`msgid_plural`). Entries:
  - the metadata entry (empty msgid) gives the charset and the number of plural forms; it is not a pair;
  - a context (`msgctxt\\x04msgid`) is removed: the msgid alone is the English text;
  - a plural entry (`msgid\\x00msgid_plural`, translations `form0\\x00form1...`) gives two pairs when the
    catalog has two plural forms, as French has (singular -> form 0, plural -> form 1), else the singular;
  - an untranslated entry (empty msgstr) gives nothing. System-dependent strings (`<PRIu64>`) are not read.

Cleaning (`clean_pair`), in this order, on each side:
  1. Multi-line: after trimming the message's ends, a line break left inside drops the pair. Those messages
     are help screens and tables whose lines do not correspond one to one.
  2. Accelerators: the only `_` or `&` of a message, followed by a letter or digit, is a keyboard mnemonic
     (`_File`, `Aid_e`, `&File`) and is removed -- unless the word holding it (letters, digits, `_`, `&`)
     appears unchanged in the other side (`GIT_DIR`, `AT&T`: an identifier, not a mnemonic). Entities
     (`&lt;`) are not mnemonics.
  3. Markup: Pango/HTML tags (`<b>`, `<span ...>`) are removed, then the five XML entities unescaped.
     Angle-bracket placeholders that are words (`<file>`, `<fichier>`) are kept: they are translated.
  4. Format specifiers are REMOVED: printf (`%s`, `%d`, `%1$s`, `%-10lu`, `%.*s`; any letter ends one, for the
     programs' own: glibc's `%m`, binutils' `%P`, `%pB`), Python (`%(name)s`) and brace (`{name}`, `{0}`)
     forms; `%%` becomes `%`. Kept, they would be identical strings on both sides: a lexical shortcut for
     cross-lingual retrieval, and easy tokens (`%` then `s`) that inflate masked-token accuracy without saying
     anything about English or French. Quotes and brackets left empty (`'%s'`, `« %s »`, `(%d)`) go with
     them, and so do spaces left before a comma or full stop.
  5. Whitespace: every run of Unicode whitespace (tabs, no-break spaces of French typography) becomes one
     space; the ends are trimmed of spaces, colons, semicolons and commas (`Width:` -> `Width`, and what a
     removed specifier leaves: `%s: error` -> `error`).
  6. Drop the pair when either side is empty or has no letter, when either side has more than `MAX_WORDS`
     whitespace-separated words (longer messages are usage paragraphs; XLM cuts sentences at 100 BPE
     tokens), or when both sides are the same text up to case, spaces and punctuation (`Version:` ->
     `Version :`, `Afar` -> `afar`: not a translation).

Grouping and splitting (`group_catalogs`, `assign_splits`): catalogs whose English messages overlap by at least
`GROUP_OVERLAP` of the smaller catalog (the same catalog under two names, two versions of one catalog, programs
sharing a library such as gnulib) form one group; whole groups go to train / valid / test, so that
near-duplicates (one message in two wordings) do not leak from training into the held-out text. Groups are
visited in an order drawn from the seed; each goes to the held-out split (valid, test) furthest below its
share of the pairs if it fits there, else to train. Shares: 80 / 10 / 10 of the pairs.

Deduplication (`one_to_one`), per split: a sentence is compared by its key (case-folded letters and digits).
Each English sentence and each French sentence appears at most once: where one English message has several
translations (or one French several sources), the pair seen in the most catalogs is kept (ties: the first in
catalog order). This keeps retrieval well defined (one right answer per query) and the monolingual files free
of repeats. Across splits: a test sentence (English or French) is removed from valid and train, and a valid
sentence from train. Pairs are then shuffled within each split (seeded): catalogs store messages sorted by
msgid, so neighbouring lines of a training stream would otherwise share their beginnings.

Output (`write_corpus`): line-aligned `{split}.en-fr.en` / `{split}.en-fr.fr`, monolingual `{split}.en` /
`{split}.fr`, and `counts.json`. Monolingual files are, by default, the two sides of the same pairs
(`monolingual="same"`): then the CLM, MLM and MLM + TLM runs of the experiment read the same text and differ
only in the objective -- TLM alone is told which sentences translate each other. `"disjoint"` gives English
from one half of the pairs and French from the other, as in the paper's setting, where monolingual data is
not parallel.
"""

from __future__ import annotations

import json
import os
import random
import re
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from xlm.cliutil import OneLineParser
from xlm.errors import DataError, XLMError

LOCALE_DIR = Path("/usr/share/locale/fr/LC_MESSAGES")
DEFAULT_OUT = Path("data/gettext-enfr")
SPLITS = ("train", "valid", "test")
SHARES = {"train": 0.8, "valid": 0.1, "test": 0.1}
MAX_WORDS = 40
GROUP_OVERLAP = 0.5
LANGS = ("en", "fr")

# ---- reading the binary .mo format --------------------------------------------------------------------------

MO_MAGIC = 0x950412DE
CONTEXT_SEPARATOR = "\x04"
PLURAL_SEPARATOR = "\x00"


@dataclass(frozen=True)
class MoEntry:
    """One message of a catalog. msgstrs: the translation, one string per plural form (one for most)."""

    msgid: str
    msgstrs: tuple[str, ...]
    msgid_plural: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class MoCatalog:
    """A parsed .mo file: its entries (without the metadata entry) and what the metadata says."""

    name: str
    entries: list[MoEntry]
    charset: str
    nplurals: int


def read_mo(path: str | Path) -> MoCatalog:
    """Parse a GNU .mo file (either byte order, format revision 0 or 1); raises DataError when it is not one.

    Layout: magic, revision, N, offset O of the originals' table, offset T of the translations' table, each
    table N (length, offset) pairs of uint32 pointing at NUL-terminated strings.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 20:
        raise DataError(f"{path}: not a gettext .mo file (too short)")
    for order in "<>":
        if struct.unpack(f"{order}I", data[:4])[0] == MO_MAGIC:
            break
    else:
        raise DataError(f"{path}: not a gettext .mo file (bad magic number)")
    revision, count, originals_at, translations_at = struct.unpack(f"{order}4I", data[4:20])
    if revision >> 16 > 1:
        raise DataError(f"{path}: unsupported .mo format revision {revision >> 16}")

    def table(offset: int) -> list[bytes]:
        end = offset + 8 * count
        if end > len(data):
            raise DataError(f"{path}: truncated .mo file (string table past the end)")
        pairs = struct.unpack(f"{order}{2 * count}I", data[offset:end])
        strings = []
        for length, start in zip(pairs[::2], pairs[1::2], strict=True):
            if start + length > len(data):
                raise DataError(f"{path}: truncated .mo file (a string past the end)")
            strings.append(data[start : start + length])
        return strings

    raw = dict(zip(table(originals_at), table(translations_at), strict=True))
    charset, nplurals = _read_metadata(raw.get(b"", b"").decode("ascii", errors="replace"))
    try:
        entries = [_entry(key.decode(charset), value.decode(charset)) for key, value in raw.items() if key]
    except (UnicodeDecodeError, LookupError) as error:
        raise DataError(f"{path}: cannot decode messages as {charset}: {error}") from None
    return MoCatalog(path.stem, entries, charset, nplurals)


def _read_metadata(header: str) -> tuple[str, int]:
    """(charset, nplurals) from the metadata entry; UTF-8 and 2 forms where it does not say."""
    charset = re.search(r"charset=\s*([\w.-]+)", header)
    nplurals = re.search(r"nplurals\s*=\s*(\d+)", header)
    return (charset.group(1) if charset else "utf-8"), (int(nplurals.group(1)) if nplurals else 2)


def _entry(key: str, value: str) -> MoEntry:
    context, _, key = key.rpartition(CONTEXT_SEPARATOR)
    msgid, _, msgid_plural = key.partition(PLURAL_SEPARATOR)
    return MoEntry(msgid, tuple(value.split(PLURAL_SEPARATOR)), msgid_plural or None, context or None)


def raw_pairs(catalog: MoCatalog) -> list[tuple[str, str]]:
    """(English, French) message pairs of a catalog, before cleaning: plural entries give two pairs when the
    catalog has two plural forms (English singular/plural <-> French forms 0/1), else the singular alone;
    untranslated messages give none."""
    pairs = []
    for entry in catalog.entries:
        sources = [entry.msgid]
        if entry.msgid_plural is not None and catalog.nplurals == 2 and len(entry.msgstrs) == 2:
            sources.append(entry.msgid_plural)
        pairs += [(en, fr) for en, fr in zip(sources, entry.msgstrs[: len(sources)], strict=True) if en and fr]
    return pairs


# ---- cleaning -------------------------------------------------------------------------------------------------

# Any letter ends a printf specifier: programs add their own (binutils' `%P`, `%B`, `%pA`; glibc's `%m`).
_WIDTH = r"(?:\*(?:\d+\$)?|\d+)"  # a number, or `*` (the next argument, or the n-th: `*2$`)
_PRINTF = rf"%(?:\d+\$)?[-+#0']*{_WIDTH}?(?:\.{_WIDTH})?(?:hh|ll|[hlLqjzZtI])?(?:p[A-Z]|[A-Za-z])"
_PYTHON_NAMED = r"%\([^()\s]+\)[-+#0 ]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
_BRACE = r"\{(?:\d+|[A-Za-z_]\w*)?(?:![rsa])?(?::[^{}\s]*)?\}"
FORMAT_SPECIFIER = re.compile(f"%%|{_PYTHON_NAMED}|{_PRINTF}|{_BRACE}")
MARKUP_TAG = re.compile(r"</?(?:b|i|u|s|tt|big|small|sub|sup|span|a|em|strong|br|p)(?:\s[^<>]*)?/?>", re.IGNORECASE)
XML_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&"}
_BRACKET_PAIRS = ("''", '""', "``", "`'", "“”", "‘’", "„“", "«»", "()", "[]", "<>")
_EMPTY_BRACKETS = re.compile("|".join(re.escape(pair[0]) + r"\s*" + re.escape(pair[1]) for pair in _BRACKET_PAIRS))
_EDGE_PUNCTUATION = ":;,"


def strip_format_specifiers(text: str) -> str:
    """Remove printf, Python and brace format specifiers (`%%` -> `%`), then, where one was removed, the
    quotes and brackets left empty (`« %s »`, `('%s')`) and spaces left before a comma or full stop."""
    stripped = FORMAT_SPECIFIER.sub(lambda match: "%" if match.group() == "%%" else "", text)
    if all(match.group() == "%%" for match in FORMAT_SPECIFIER.finditer(text)):
        return stripped  # no specifier (at most `%%`): brackets in the text are the text's own
    while (emptied := _EMPTY_BRACKETS.sub("", stripped)) != stripped:  # nested: `('')` -> `()` -> ``
        stripped = emptied
    return re.sub(r"\s+(?=[,.](?:\s|$))", "", stripped)  # `rename %s to %s, because` -> `rename to, because`


def strip_accelerator(text: str, other: str) -> str:
    """Remove a keyboard mnemonic (`_File` -> `File`, `Aid_e` -> `Aide`, `&Open` -> `Open`): the only `_` or
    `&` of the message, before a letter or digit, unless its word appears unchanged in `other` (the message
    in the other language), which marks an identifier (`GIT_DIR`, `AT&T`)."""
    for marker in "_&":
        if text.count(marker) != 1:
            continue
        at = text.index(marker)
        following = text[at + 1 : at + 2]
        if not following.isalnum() or (marker == "&" and re.match(r"&\w+;", text[at:])):
            continue
        word = next(match.group() for match in re.finditer(r"[\w&]+", text) if match.start() <= at < match.end())
        if word not in other:
            text = text[:at] + text[at + 1 :]
    return text


def clean_text(text: str, other: str) -> str:
    """One side of a pair through rules 2-5 of the module docstring (`other`: the raw other side). May return
    an empty string; the caller drops the pair then."""
    text = strip_accelerator(text, other)
    text = MARKUP_TAG.sub("", text)
    for entity, character in XML_ENTITIES.items():
        text = text.replace(entity, character)
    text = " ".join(strip_format_specifiers(text).split())
    return text.strip(_EDGE_PUNCTUATION + " ")


def sentence_key(text: str) -> str:
    """What two sentences must share to count as the same: their letters and digits, case-folded."""
    return "".join(character for character in text.casefold() if character.isalnum())


def clean_pair(en: str, fr: str, dropped: Counter | None = None) -> tuple[str, str] | None:
    """The cleaned (English, French) pair, or None when a rule of the module docstring drops it; the rule's
    name is counted in `dropped` ("multi-line", "empty", "too long", "identical")."""
    en, fr = en.strip(), fr.strip()
    reason = None
    if "\n" in en or "\n" in fr or "\r" in en or "\r" in fr:
        reason = "multi-line"
    else:
        en, fr = clean_text(en, fr), clean_text(fr, en)
        if not any(c.isalpha() for c in en) or not any(c.isalpha() for c in fr):
            reason = "empty"
        elif len(en.split()) > MAX_WORDS or len(fr.split()) > MAX_WORDS:
            reason = "too long"
        elif sentence_key(en) == sentence_key(fr):
            reason = "identical"
    if reason is None:
        return en, fr
    if dropped is not None:
        dropped[reason] += 1
    return None


# ---- catalogs, groups, splits -----------------------------------------------------------------------------


@dataclass
class Catalog:
    """The cleaned pairs of one .mo file, in file order (repeats within the file kept: counted as one)."""

    name: str
    pairs: list[tuple[str, str]]


def read_catalogs(locale_dir: str | Path = LOCALE_DIR, dropped: Counter | None = None) -> list[Catalog]:
    """Every `*.mo` of locale_dir, cleaned, in file-name order; raises DataError when there is none."""
    locale_dir = Path(locale_dir)
    paths = sorted(locale_dir.glob("*.mo"))
    if not paths:
        raise DataError(f"no .mo catalogs in {locale_dir}")
    catalogs = []
    for path in paths:
        mo = read_mo(path)
        pairs = [cleaned for en, fr in raw_pairs(mo) if (cleaned := clean_pair(en, fr, dropped))]
        catalogs.append(Catalog(mo.name, list(dict.fromkeys(pairs))))
    return catalogs


def group_catalogs(catalogs: list[Catalog], min_overlap: float = GROUP_OVERLAP) -> list[list[Catalog]]:
    """Catalogs linked (transitively) when the English sentence keys they share are at least min_overlap of
    the smaller one's. Groups keep file-name order, and are listed by their first catalog."""
    keys = [{sentence_key(en) for en, _ in catalog.pairs} for catalog in catalogs]
    parent = list(range(len(catalogs)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(catalogs)):
        for j in range(i + 1, len(catalogs)):
            smaller = min(len(keys[i]), len(keys[j]))
            if smaller and len(keys[i] & keys[j]) >= min_overlap * smaller:
                parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[Catalog]] = {}
    for i, catalog in enumerate(catalogs):
        groups.setdefault(root(i), []).append(catalog)
    return list(groups.values())


def assign_splits(groups: list[list[Catalog]], seed: int = 0) -> dict[str, list[Catalog]]:
    """Whole groups to train / valid / test (module docstring), deterministically from the seed. A group's
    size is its number of distinct pairs. Raises DataError when a held-out split gets no catalog."""
    sizes = [len({pair for catalog in group for pair in catalog.pairs}) for group in groups]
    total = sum(sizes)
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    filled = dict.fromkeys(SPLITS, 0)
    chosen: dict[str, list[Catalog]] = {split: [] for split in SPLITS}
    for index in order:
        deficits = {split: SHARES[split] * total - filled[split] for split in SPLITS if split != "train"}
        fitting = [split for split, deficit in deficits.items() if sizes[index] <= deficit]
        split = max(fitting, key=deficits.__getitem__) if fitting else "train"
        filled[split] += sizes[index]
        chosen[split] += groups[index]
    for split, catalogs in chosen.items():
        if not catalogs:
            raise DataError(f"the {len(groups)} catalog groups cannot be split: {split} gets none (too few catalogs)")
        catalogs.sort(key=lambda catalog: catalog.name)
    return chosen


# ---- deduplication and the corpus -------------------------------------------------------------------------


@dataclass
class Split:
    """One split: the catalogs it was built from and its pairs, deduplicated and shuffled."""

    name: str
    catalogs: list[str]
    pairs: list[tuple[str, str]]


@dataclass
class GettextCorpus:
    splits: dict[str, Split]
    seed: int
    source: str
    dropped: Counter = field(default_factory=Counter)  # rule -> pairs it removed (module docstring)


def pair_keys(pair: tuple[str, str]) -> tuple[str, str]:
    """The keys of a pair's English and French sentences, tagged by language (one set can hold both)."""
    return "en:" + sentence_key(pair[0]), "fr:" + sentence_key(pair[1])


def one_to_one(
    catalogs: list[Catalog], excluded: set[str] = frozenset(), dropped: Counter | None = None
) -> list[tuple[str, str]]:
    """The catalogs' pairs with every English and every French sentence key at most once, and none in
    `excluded` (the keys of held-out splits). Where pairs compete, the one found in more catalogs wins, then
    the first in catalog order. Returned in first-occurrence order."""
    occurrences = Counter(pair for catalog in catalogs for pair in catalog.pairs)
    first_seen = {pair: index for index, pair in enumerate(occurrences)}  # a Counter keeps insertion order
    used = set(excluded)
    kept = []
    for pair in sorted(occurrences, key=lambda pair: (-occurrences[pair], first_seen[pair])):
        keys = pair_keys(pair)
        if keys[0] in used or keys[1] in used:
            if dropped is not None:
                dropped["held-out overlap" if keys[0] in excluded or keys[1] in excluded else "one-to-one"] += 1
            continue
        used.update(keys)
        kept.append(pair)
    if dropped is not None:
        dropped["repeat"] += sum(occurrences.values()) - len(occurrences)
    return sorted(kept, key=first_seen.__getitem__)


def build_corpus(locale_dir: str | Path = LOCALE_DIR, seed: int = 0) -> GettextCorpus:
    """Read, clean, group, split and deduplicate the catalogs of locale_dir (module docstring)."""
    dropped: Counter = Counter()
    catalogs = read_catalogs(locale_dir, dropped)
    by_split = assign_splits(group_catalogs(catalogs), seed)
    splits: dict[str, Split] = {}
    excluded: set[str] = set()
    for name in reversed(SPLITS):  # test first: its sentences leave valid and train
        pairs = one_to_one(by_split[name], excluded, dropped)
        random.Random(f"{seed}:{name}").shuffle(pairs)
        splits[name] = Split(name, [catalog.name for catalog in by_split[name]], pairs)
        excluded |= {key for pair in pairs for key in pair_keys(pair)}
    return GettextCorpus({name: splits[name] for name in SPLITS}, seed, str(locale_dir), dropped)


# ---- files and counts -------------------------------------------------------------------------------------


def monolingual_indices(n_pairs: int, monolingual: str, seed: int) -> dict[str, list[int]]:
    """Which pairs give the monolingual files: all of them for each language ("same"), or a seeded half for
    English and the other half for French ("disjoint")."""
    if monolingual == "same":
        return {lang: list(range(n_pairs)) for lang in LANGS}
    if monolingual != "disjoint":
        raise DataError(f"monolingual must be 'same' or 'disjoint', got {monolingual!r}")
    order = list(range(n_pairs))
    random.Random(f"{seed}:monolingual").shuffle(order)
    return {"en": sorted(order[: n_pairs // 2]), "fr": sorted(order[n_pairs // 2 :])}


def write_corpus(
    corpus: GettextCorpus,
    out_dir: str | Path,
    *,
    monolingual: str = "same",
    tokenizer=None,
    workers: int = 1,
) -> dict:
    """Write `{split}.en-fr.{en,fr}`, `{split}.{en,fr}` and `counts.json` under out_dir; returns the counts.

    tokenizer: an `xlm.Tokenizer` with languages en and fr, to count BPE tokens (without framing), or None.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {
        "source": corpus.source,
        "seed": corpus.seed,
        "monolingual": monolingual,
        "rules": {"max_words": MAX_WORDS, "group_overlap": GROUP_OVERLAP, "shares": SHARES},
        "dropped": dict(sorted(corpus.dropped.items())),
        "splits": {},
    }
    for name, split in corpus.splits.items():
        sides = {lang: [pair[i] for pair in split.pairs] for i, lang in enumerate(LANGS)}
        chosen = monolingual_indices(len(split.pairs), monolingual, corpus.seed)
        stats: dict = {"catalogs": len(split.catalogs), "catalog_names": split.catalogs, "pairs": len(split.pairs)}
        for lang, lines in sides.items():
            _write_lines(out_dir / f"{name}.en-fr.{lang}", lines)
            _write_lines(out_dir / f"{name}.{lang}", [lines[i] for i in chosen[lang]])
            words = [len(line.split()) for line in lines]
            tokens = _token_counts(tokenizer, lines, lang, workers)
            stats[lang] = {
                "words": sum(words),
                "tokens": sum(tokens) if tokens else None,
                "monolingual_sentences": len(chosen[lang]),
                "monolingual_words": sum(words[i] for i in chosen[lang]),
                "monolingual_tokens": sum(tokens[i] for i in chosen[lang]) if tokens else None,
            }
        counts["splits"][name] = stats
    (out_dir / "counts.json").write_text(json.dumps(counts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _token_counts(tokenizer, lines: list[str], lang: str, workers: int) -> list[int] | None:
    if tokenizer is None:
        return None
    return [len(ids) for ids in tokenizer.encode_lines(lines, lang, add_special_tokens=False, workers=workers)]


def counts_table(counts: dict) -> str:
    """The counts as a Markdown table: one row per split and a total."""
    has_tokens = all(split["en"]["tokens"] is not None for split in counts["splits"].values())
    header = ["split", "catalogs", "pairs", "English words", "French words"]
    header += ["English BPE tokens", "French BPE tokens"] if has_tokens else []
    rows = []
    for name, split in counts["splits"].items():
        row = [split["catalogs"], split["pairs"], split["en"]["words"], split["fr"]["words"]]
        rows.append([name, *row, *([split["en"]["tokens"], split["fr"]["tokens"]] if has_tokens else [])])
    rows.append(["total", *(sum(row[i] for row in rows) for i in range(1, len(header)))])
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join([row[0], *(f"{value:,}" for value in row[1:])]) + " |" for row in rows]
    return "\n".join(lines)


def counts_summary(counts: dict) -> str:
    """The table, then what each rule dropped and which catalogs the held-out splits hold (Markdown)."""
    dropped = ", ".join(f"{rule} {count:,}" for rule, count in counts["dropped"].items())
    lines = [counts_table(counts), "", f"Pairs dropped, by rule: {dropped}."]
    for name in ("valid", "test"):
        catalogs = ", ".join(counts["splits"][name]["catalog_names"])
        lines += ["", f"Catalogs of {name} (seed {counts['seed']}): {catalogs}."]
    return "\n".join(lines)


DOCS_BEGIN, DOCS_END = "<!-- make_gettext_corpus.py: begin -->", "<!-- make_gettext_corpus.py: end -->"


def write_docs_table(path: str | Path, table: str, markers: tuple[str, str] = (DOCS_BEGIN, DOCS_END)) -> None:
    """Replace the text between the two markers of a Markdown page with `table` (any Markdown)."""
    path, (begin, end) = Path(path), markers
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise DataError(f"{path} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


# ---- command line -----------------------------------------------------------------------------------------


def default_enfr_vocab_dir() -> Path:
    """The real English-French BPE files: env XLM_ENFR_VOCAB, else ../shared/xlm-enfr-vocab from the repository."""
    return Path(os.environ.get("XLM_ENFR_VOCAB", Path(__file__).resolve().parents[2] / "shared" / "xlm-enfr-vocab"))


def enfr_tokenizer(vocab_dir: str | Path):
    """xlm.Tokenizer on the original fastBPE files (codes_enfr, vocab_enfr), 'original' preset: what XLM saw."""
    from xlm.tokenizer import Tokenizer

    vocab_dir = Path(vocab_dir)
    codes, vocab = vocab_dir / "codes_enfr", vocab_dir / "vocab_enfr"
    if not (codes.is_file() and vocab.is_file()):
        raise DataError(f"no codes_enfr/vocab_enfr in {vocab_dir} (set XLM_ENFR_VOCAB or pass --vocab-dir)")
    return Tokenizer.from_fastbpe(codes, vocab, languages=list(LANGS))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--locale-dir", type=Path, default=LOCALE_DIR, help="French catalogs (*.mo)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which catalogs go to which split; shuffling")
    parser.add_argument("--monolingual", choices=("same", "disjoint"), default="same")
    parser.add_argument("--vocab-dir", type=Path, default=None, help="codes_enfr + vocab_enfr (XLM_ENFR_VOCAB)")
    parser.add_argument("--no-tokens", action="store_true", help="count words only, without the BPE vocabulary")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="tokenizer processes")
    parser.add_argument("--write-docs", type=Path, metavar="PAGE", help="also put the table into PAGE, between markers")
    args = parser.parse_args(argv)
    try:
        tokenizer = None if args.no_tokens else enfr_tokenizer(args.vocab_dir or default_enfr_vocab_dir())
        corpus = build_corpus(args.locale_dir, args.seed)
        counts = write_corpus(corpus, args.out, monolingual=args.monolingual, tokenizer=tokenizer, workers=args.workers)
        summary = counts_summary(counts)
        if args.write_docs:
            write_docs_table(args.write_docs, summary)
    except (XLMError, OSError) as error:
        print(f"make_gettext_corpus: error: {error}", file=sys.stderr)
        return 2
    print(f"{summary}\n\nFiles and counts.json in {args.out}")
    return 0
