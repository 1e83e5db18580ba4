"""Acceptance: our ids equal transformers' on every line of a real English and French corpus.

The reference for a line in language `lang` is transformers' `_tokenize(line, lang=lang)` plus its special
tokens (xlm.parity.transformers_reference_ids): transformers' public `tokenize()` drops `lang`. The original
preset has its own reference, XLM's Perl pipeline (tests/test_tokenizer_perl.py).
Line counts and results appear in pytest's summary under "xlm test report".
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scripts.bench_tokenizer import transformers_encode_lines
from xlm.tokenizer import Tokenizer

LANGS = ("en", "fr")


@pytest.fixture(scope="module")
def reference_ids(enfr_transformers_tokenizer, gettext_text) -> dict[str, list[list[int]]]:
    """transformers' ids for every corpus line, computed once (two processes): {"en": [...], "fr": [...]}."""
    return {
        lang: transformers_encode_lines(enfr_transformers_tokenizer, lines, [lang] * len(lines), workers=2)
        for lang, lines in gettext_text.items()
    }


def assert_same_ids(lines: list[str], ours: list[list[int]], theirs: list[list[int]], what: str) -> None:
    """All lines equal, or a failure that shows how many differ and the first three."""
    assert len(ours) == len(theirs) == len(lines)
    differing = [(line, a, b) for line, a, b in zip(lines, ours, theirs, strict=True) if a != b]
    shown = "\n".join(f"  {line!r}\n    ours   {a}\n    theirs {b}" for line, a, b in differing[:3])
    assert not differing, f"{what}: {len(differing):,} of {len(lines):,} lines differ, e.g.\n{shown}"


@pytest.mark.parametrize("lang", LANGS)
def test_every_corpus_line_equals_transformers(enfr_tokenizer_dir, gettext_text, reference_ids, report, lang):
    lines = gettext_text[lang]
    ours = Tokenizer.from_pretrained(enfr_tokenizer_dir).encode_lines(lines, lang, workers=2)
    assert_same_ids(lines, ours, reference_ids[lang], f"transformers preset, {lang}")
    report(f"transformers parity ({lang}): {len(lines):,} of {len(lines):,} lines give identical ids")


@pytest.mark.fastbpe
@pytest.mark.parametrize("lang", LANGS)
def test_fastbpe_backend_equals_transformers_on_the_corpus(
    enfr_tokenizer_dir, gettext_text, reference_ids, report, require_fastbpe, lang
):
    lines = gettext_text[lang]
    tokenizer = Tokenizer.from_pretrained(enfr_tokenizer_dir, bpe_backend="fastbpe")
    ours = tokenizer.encode_lines(lines, lang, workers=2)
    assert_same_ids(lines, ours, reference_ids[lang], f"fastBPE backend, {lang}")
    report(f"fastBPE backend ({lang}): {len(lines):,} of {len(lines):,} lines give identical ids")


def test_decode_equals_transformers_on_the_corpus(enfr_tokenizer_dir, enfr_transformers_tokenizer, reference_ids):
    tokenizer = Tokenizer.from_pretrained(enfr_tokenizer_dir)
    for lang in LANGS:
        ours = [tokenizer.decode(ids) for ids in reference_ids[lang]]
        assert ours == [enfr_transformers_tokenizer.decode(ids) for ids in reference_ids[lang]]


ANY_TEXT = st.one_of(
    st.text(),
    st.lists(
        st.one_of(
            st.text(max_size=6),
            st.sampled_from(["</s>", "<special1>", "<s>", "l'", "L’", "«", "»", "…", "No.", "U.S.", "3,5", "É", "ß"]),
            st.sampled_from([" ", "\t", "\n", "\u00a0", "\u3000", "\u200b", "\u0301", "。", "，", "？", "-", "@"]),
        ),
        max_size=25,
    ).map("".join),
)


@pytest.fixture(scope="module")
def enfr(enfr_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(enfr_tokenizer_dir)


@settings(max_examples=400, deadline=None)
@given(text=ANY_TEXT, lang=st.sampled_from(LANGS))
def test_arbitrary_text_equals_transformers(enfr, enfr_transformers_tokenizer, transformers_ids, text, lang):
    # The original preset follows the Perl scripts instead: tests/test_tokenizer_perl.py.
    assert enfr.encode(text, lang) == transformers_ids(enfr_transformers_tokenizer, text, lang)
