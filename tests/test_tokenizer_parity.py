"""Acceptance: our ids equal transformers' on every line of a real English and French corpus.

The reference for a line in language `lang` is transformers' `_tokenize(line, lang=lang)` plus its special
tokens (xlm.parity.transformers_reference_ids): transformers' public `tokenize()` drops `lang`.
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


@pytest.fixture(scope="module")
def cased_transformers_tokenizer(transformers_module, enfr_tokenizer_dir):
    """transformers' XLMTokenizer with lowercasing off: what the original preset must equal, framing aside."""
    return transformers_module.XLMTokenizer(
        enfr_tokenizer_dir / "vocab.json",
        enfr_tokenizer_dir / "merges.txt",
        do_lowercase_and_remove_accent=False,
        lang2id={"en": 0, "fr": 1},
        id2lang={0: "en", 1: "fr"},
    )


@pytest.mark.parametrize("lang", LANGS)
def test_original_preset_equals_cased_transformers_on_a_corpus_sample(
    enfr_tokenizer_dir, gettext_text, cased_transformers_tokenizer, transformers_ids, report, lang
):
    lines = gettext_text[lang][::10]
    original = Tokenizer.from_pretrained(enfr_tokenizer_dir, preset="original")
    ours = original.encode_lines(lines, lang)
    theirs = [[1, *transformers_ids(cased_transformers_tokenizer, line, lang)[1:]] for line in lines]
    assert_same_ids(lines, ours, theirs, f"original preset, {lang}")
    report(
        f"original preset ({lang}): {len(lines):,} lines (every 10th), identical to transformers with lowercasing off"
    )


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
def both_presets(enfr_tokenizer_dir) -> tuple[Tokenizer, Tokenizer]:
    return Tokenizer.from_pretrained(enfr_tokenizer_dir), Tokenizer.from_pretrained(
        enfr_tokenizer_dir, preset="original"
    )


@settings(max_examples=400, deadline=None)
@given(text=ANY_TEXT, lang=st.sampled_from(LANGS))
def test_arbitrary_text_equals_transformers(
    both_presets, enfr_transformers_tokenizer, cased_transformers_tokenizer, transformers_ids, text, lang
):
    transformers_preset, original = both_presets
    assert transformers_preset.encode(text, lang) == transformers_ids(enfr_transformers_tokenizer, text, lang)
    cased_ids = transformers_ids(cased_transformers_tokenizer, text, lang, add_special_tokens=False)
    assert original.encode(text, lang, add_special_tokens=False) == cased_ids
