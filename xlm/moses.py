"""Moses preprocessing: raw text -> words, in the order XLM's `tools/tokenize.sh` and transformers apply it.

    text
     1. replace_unicode_punctuation     fullwidth/CJK punctuation, digits to ASCII, `’` -> `'`, `…` -> `...`
     2. MosesPunctNormalizer(lang)      quotes, dashes, spaces around brackets, French guillemets, ...
     3. remove_non_printing_characters  deletes every Unicode "Other" (C*) character
     4. normalise_romanian              Romanian only: cedilla -> comma letters, then diacritics dropped
     5. MosesTokenizer(lang)            splits off punctuation; language rules (fr: `l'année` -> `l'` `année`)
    words
     6. lowercase_and_remove_accents    optional, on the words (a per-checkpoint choice, see xlm/tokenizer.py)

Steps 1, 3, 4 and 6 are written here; 2 and 5 are sacremoses (the Python port of the Moses Perl scripts),
called with the same arguments as in transformers' `XLMTokenizer`. Every step reproduces transformers 5.24,
the parity target, also where it departs from the Perl original:

- Step 3 *deletes* control characters where the Perl script puts a space: `"tab\\there"` becomes `tabhere`.
- Step 4 runs for `lang="ro"` whatever the checkpoint, as in transformers (the enro model was trained so).

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
_UNICODE_PUNCTUATION = str.maketrans(
    {
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
)
# The two full stops also swallow the whitespace after them: "。 " and "．" both become ". ".
_FULL_STOP = re.compile(r"[。．]\s*")

# Step 4, Sennrich's normalise-romanian.py then remove-diacritics.py, folded into one table: the cedilla
# letters (Ş ş Ţ ţ) become comma letters (Ș ș Ț ț), which then lose their diacritic like ă â î.
_ROMANIAN = str.maketrans("ŞşŢţȘșȚțĂăÂâÎî", "SsTtSsTtAaAaIi")


def replace_unicode_punctuation(text: str) -> str:
    """Step 1: CJK/fullwidth punctuation and digits, curly quotes and `…` to their ASCII forms."""
    return _FULL_STOP.sub(". ", text).translate(_UNICODE_PUNCTUATION)


def remove_non_printing_characters(text: str) -> str:
    """Step 3: delete every character of category C* (control, format, surrogate, private use, unassigned).

    `str.isprintable()` is false for every C* character (and for some spaces): an exact fast path for the
    common case of clean text.
    """
    if text.isprintable():
        return text
    return "".join(char for char in text if not unicodedata.category(char).startswith("C"))


def normalise_romanian(text: str) -> str:
    """Step 4 (Romanian only): `ş`/`ș` -> `s`, `ţ`/`ț` -> `t`, `ă`/`â` -> `a`, `î` -> `i`, and capitals."""
    return text.translate(_ROMANIAN)


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

    The sacremoses objects load their language tables here, once: build one pipeline per language, reuse it.
    """

    def __init__(self, lang: str):
        if lang in SEGMENTER_LANGUAGES:
            raise TokenizerError(
                f"language {lang!r} needs {SEGMENTER_LANGUAGES[lang]}, which xlm does not implement"
            )
        self.lang = lang
        self._normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
        self._tokenizer = sacremoses.MosesTokenizer(lang=lang)

    def __call__(self, text: str) -> list[str]:
        text = replace_unicode_punctuation(text)
        text = self._normalizer.normalize(text)
        text = remove_non_printing_characters(text)
        if self.lang == "ro":
            text = normalise_romanian(text)
        # escape=False: keep `&`, `<`, `'` as they are, not Moses' XML escapes (`&amp;`, ...), as XLM did.
        return self._tokenizer.tokenize(text, return_str=False, escape=False)
