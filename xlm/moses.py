"""Moses preprocessing: raw text -> words, in the order XLM's `tools/tokenize.sh` and transformers apply it.

    text
     1. replace_unicode_punctuation     fullwidth/CJK punctuation, digits to ASCII, `’` -> `'`, `…` -> `...`
     2. normalize punctuation           quotes, dashes, spaces around brackets, French guillemets, ...
     3. remove_non_printing_characters  every Unicode "Other" (C*) character
     4. normalise_romanian              Romanian only: cedilla -> comma letters, then diacritics dropped
     5. MosesTokenizer(lang)            splits off punctuation; language rules (fr: `l'année` -> `l'` `année`)
    words
     6. lowercase_and_remove_accents    optional, on the words (a per-checkpoint choice, see xlm/tokenizer.py)

Two sets of rules, one per tokenizer preset (`MosesPipeline(lang, original=...)`):

- transformers' (`original=False`): steps 1, 3, 4 and 6 are written here, 2 and 5 are sacremoses (the Python
  port of the Moses Perl scripts) called with the same arguments as in transformers' `XLMTokenizer`. Every
  step reproduces transformers 5.24, the parity target, also where it departs from the Perl original:
  step 3 *deletes* control characters (`"tab\\there"` -> `tabhere`), and steps 1 and 2 follow newer Moses.
- the Perl scripts of 2018 that made XLM's English-French training data (`original=True`; the version is
  fixed by the vocabulary, docs/tokenizer.md): step 3 puts a *space* for each control character
  (`tab here`), step 2 is `PunctuationNormalizer2018` below (`‘` -> `"`, the line's newline seen by the
  rules), step 1 maps fullwidth `１` to `"`, and step 5 uses the 2018 non-breaking prefixes.

Step 4 runs for `lang="ro"` whatever the checkpoint, as in transformers and XLM's `get-data-nmt.sh`.

Chinese, Thai and Japanese need a word segmenter before or instead of step 5 (transformers calls rjieba,
pythainlp and KyTea). None is implemented here, and the English rules would give silently different words,
so those languages raise `TokenizerError`.
"""

from __future__ import annotations

import re
import unicodedata

import sacremoses

from xlm.errors import TokenizerError

# Languages that transformers segments with a dedicated tool instead of the Moses tokenizer.
SEGMENTER_LANGUAGES = {
    "zh": "Chinese word segmentation (transformers uses rjieba)",
    "th": "Thai word segmentation (transformers uses pythainlp)",
    "ja": "Japanese word segmentation (transformers uses KyTea)",
}

# Step 1, the table of Moses' replace-unicode-punctuation.perl. Every source character is non-ASCII and every
# replacement ASCII, so one `str.translate` equals the Perl script's sequence of substitutions.
_UNICODE_PUNCTUATION = {
    "，": ",",
    "、": ",",
    "”": '"',
    "“": '"',
    "∶": ":",
    "：": ":",
    "？": "?",
    "《": '"',
    "》": '"',
    "）": ")",
    "！": "!",
    "（": "(",
    "；": ";",
    "」": '"',
    "「": '"',
    "～": "~",
    "’": "'",
    "…": "...",
    "━": "-",
    "〈": "<",
    "〉": ">",
    "【": "[",
    "】": "]",
    "％": "%",
    **{chr(ord("０") + digit): str(digit) for digit in range(10)},
}
_UNICODE_PUNCTUATION_TABLE = str.maketrans(_UNICODE_PUNCTUATION)
# The 2018 script turned fullwidth `１` into `"` (a slip fixed in 2019; transformers has the fix).
_UNICODE_PUNCTUATION_TABLE_2018 = str.maketrans({**_UNICODE_PUNCTUATION, "１": '"'})
# The two full stops also swallow the whitespace after them: "。 " and "．" both become ". ". transformers
# swallows any whitespace (`\s*`), the Perl script only spaces (` *`).
_FULL_STOP = re.compile(r"[。．]\s*")
_FULL_STOP_2018 = re.compile(r"[。．] *")

# Step 4, Sennrich's normalise-romanian.py then remove-diacritics.py, folded into one table: the cedilla
# letters (Ş ş Ţ ţ) become comma letters (Ș ș Ț ț), which then lose their diacritic like ă â î.
_ROMANIAN = str.maketrans("ŞşŢţȘșȚțĂăÂâÎî", "SsTtSsTtAaAaIi")


def replace_unicode_punctuation(text: str, *, original: bool = False) -> str:
    """Step 1: CJK/fullwidth punctuation and digits, curly quotes and `…` to their ASCII forms.

    original: the 2018 script's rules (`１` -> `"`, a full stop swallows the spaces after it, not tabs).
    """
    if text.isascii():
        return text  # every character the table replaces is non-ASCII
    if original:
        return _FULL_STOP_2018.sub(". ", text).translate(_UNICODE_PUNCTUATION_TABLE_2018)
    return _FULL_STOP.sub(". ", text).translate(_UNICODE_PUNCTUATION_TABLE)


def remove_non_printing_characters(text: str, *, original: bool = False) -> str:
    """Step 3: every character of category C* (control, format, surrogate, private use, unassigned) is deleted,
    as in transformers, or (original) becomes a space, as in remove-non-printing-char.perl: `a\\tb` -> `a b`.

    `str.isprintable()` is false for every C* character (and for some spaces): an exact fast path for the
    common case of clean text.
    """
    if text.isprintable():
        return text
    replacement = " " if original else ""
    return "".join(replacement if unicodedata.category(char)[0] == "C" else char for char in text)


def normalise_romanian(text: str) -> str:
    """Step 4 (Romanian only): `ş`/`ș` -> `s`, `ţ`/`ț` -> `t`, `ă`/`â` -> `a`, `î` -> `i`, and capitals."""
    return text.translate(_ROMANIAN)


class PunctuationNormalizer2018:
    r"""Step 2 of the original pipeline: Moses' normalize-punctuation.perl of 2018, rule for rule.

    The script reads bytes (no `use utf8`), so `\d` is an ASCII digit and `[a-z]` with /i an ASCII letter;
    the rules below say so explicitly. It reads each line with its newline, and one rule sees it: for languages
    other than en/cs/cz, `."` followed by any character but `<` becomes `".`, so also at the end of a line.
    Differences from sacremoses' port (what transformers runs): `‘` and `‚` not between letters become `"`
    (`'` since 2019); `«` and `»` between two no-break spaces keep a space (sacremoses' `perl_parity` mode);
    the quote-comma rules of French and German apply to every language but en/cs/cz (sacremoses: de/es/fr).
    """

    NBSP = "\u00a0"
    RULES = (
        # remove extra spaces
        (r"\r", ""),
        (r"\(", " ("),
        (r"\)", ") "),
        (r" +", " "),
        (r"\) ([.!:?;,])", r")\1"),
        (r"\( ", "("),
        (r" \)", ")"),
        (r"([0-9]) %", r"\1%"),
        (r" :", ":"),
        (r" ;", ";"),
        # normalize unicode punctuation (the script's default, not -penn)
        (r"`", "'"),
        (r"''", ' " '),
        (r"„", '"'),
        (r"“", '"'),
        (r"”", '"'),
        (r"–", "-"),
        (r"—", " - "),
        (r" +", " "),
        (r"´", "'"),
        (r"([a-zA-Z])‘([a-zA-Z])", r"\1'\2"),
        (r"([a-zA-Z])’([a-zA-Z])", r"\1'\2"),
        (r"‘", '"'),
        (r"‚", '"'),
        (r"’", '"'),
        (r"''", '"'),
        (r"´´", '"'),
        (r"…", "..."),
        # French quotes
        (f"{NBSP}«{NBSP}", ' "'),
        (f"«{NBSP}", '"'),
        (r"«", '"'),
        (f"{NBSP}»{NBSP}", '" '),
        (f"{NBSP}»", '"'),
        (r"»", '"'),
        # handle pseudo-spaces
        (f"{NBSP}%", "%"),
        (f"nº{NBSP}", "nº "),
        (f"{NBSP}:", ":"),
        (f"{NBSP}ºC", " ºC"),
        (f"{NBSP}cm", " cm"),
        (f"{NBSP}\\?", "?"),
        (f"{NBSP}!", "!"),
        (f"{NBSP};", ";"),
        (f",{NBSP}", ", "),
        (r" +", " "),
    )
    ENGLISH_QUOTE_COMMA = ((r'"([,.]+)', r'\1"'),)
    OTHER_QUOTE_COMMA = ((r',"', '",'), (r'(\.+)"([ \t\n\r\f\v]*[^<])', r'"\1\2'))
    DECIMAL_COMMA_LANGUAGES = ("de", "es", "cz", "cs", "fr")

    def __init__(self, lang: str):
        rules = list(self.RULES)
        if lang == "en":
            rules += self.ENGLISH_QUOTE_COMMA
        elif lang not in ("cs", "cz"):
            rules += self.OTHER_QUOTE_COMMA
        separator = "," if lang in self.DECIMAL_COMMA_LANGUAGES else "."
        rules.append((f"([0-9]){self.NBSP}([0-9])", rf"\1{separator}\2"))
        self.rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]

    def __call__(self, text: str) -> str:
        text += "\n"  # the line as the script reads it
        for pattern, replacement in self.rules:
            text = pattern.sub(replacement, text)
        return text[:-1]  # no rule removes or moves the final newline


_PREFIXES_ADDED_SINCE_2018 = {"en": ("Rs",)}


class MosesTokenizer2018(sacremoses.MosesTokenizer):
    """Step 5 of the original pipeline: sacremoses' port of tokenizer.perl with the 2018 script's non-breaking
    prefixes. English `Rs` was added to Moses after 2018: in the training data `Rs.` before a capital or at the
    end of a line lost its dot (`Rs .`).

    The port equals the 2018 script on every English and French line of tests/test_tokenizer_perl.py. Known
    differences for other languages: the script splits Irish (`ga`) apostrophes like French, Finnish and
    Swedish colons and Somali apostrophes by their own rules; the port does not.
    """

    def __init__(self, lang: str):
        super().__init__(lang=lang)
        added = _PREFIXES_ADDED_SINCE_2018.get(lang, ())
        self.NONBREAKING_PREFIXES = [prefix for prefix in self.NONBREAKING_PREFIXES if prefix not in added]


def lowercase_and_remove_accents(words: list[str]) -> list[str]:
    """Step 6: XLM's `tools/lowercase_and_remove_accent.py` on a list of words.

    lower -> NFD -> drop combining marks (category Mn) -> lower again. As in XLM and transformers the words
    are joined with spaces and split again, so a word made only of combining marks comes back as `""` (the
    caller drops empty words).
    """
    text = " ".join(words).lower()
    if text.isascii():
        return text.split(" ")
    text = unicodedata.normalize("NFD", text)
    text = "".join(char for char in text if unicodedata.category(char) != "Mn")
    return text.lower().split(" ")


class MosesPipeline:
    """Steps 1-5 for one language: `MosesPipeline("fr")("L'été.")` -> `["L'", "été", "."]`.

    original: the 2018 Perl scripts' rules instead of transformers' (module docstring).
    The language tables load here, once: build one pipeline per language, reuse it.
    """

    def __init__(self, lang: str, *, original: bool = False):
        if lang in SEGMENTER_LANGUAGES:
            raise TokenizerError(f"language {lang!r} needs {SEGMENTER_LANGUAGES[lang]}, which xlm does not implement")
        self.lang = lang
        self.original = original
        if original:
            self._normalize = PunctuationNormalizer2018(lang)
            self._tokenizer = MosesTokenizer2018(lang)
        else:
            self._normalize = sacremoses.MosesPunctNormalizer(lang=lang).normalize
            self._tokenizer = sacremoses.MosesTokenizer(lang=lang)

    def __call__(self, text: str) -> list[str]:
        text = replace_unicode_punctuation(text, original=self.original)
        text = self._normalize(text)
        text = remove_non_printing_characters(text, original=self.original)
        if self.lang == "ro":
            text = normalise_romanian(text)
        # escape=False: keep `&`, `<`, `'` as they are, not Moses' XML escapes (`&amp;`, ...), as XLM did.
        return self._tokenizer.tokenize(text, return_str=False, escape=False)
