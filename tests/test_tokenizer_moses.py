"""Moses preprocessing (xlm/moses.py): each step against transformers' own function; the language rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlm.errors import TokenizerError
from xlm.moses import (
    MosesPipeline,
    PunctuationNormalizer2018,
    lowercase_and_remove_accents,
    normalise_romanian,
    remove_non_printing_characters,
    replace_unicode_punctuation,
)

# Characters that the steps treat specially, mixed into arbitrary text so that examples hit the rules often.
TRICKY = list("，。．、”“∶：？《》）！（；」「０１２３４５６７８９～’…━〈〉【】％ \t\n\u3000\u00a0\u200b\u2028")
TRICKY += [*"ŞşŢţȘșȚțĂăÂâÎîÉéİıΣσςẞß\u0301\u0327", "l'", "L'", "«", "»", "No.", "’s"]
TEXT = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(TRICKY)), max_size=20).map("".join)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3)


@pytest.fixture(scope="module")
def hf_xlm(transformers_module):
    """transformers' tokenization_xlm module, whose free functions are the reference for each step."""
    from transformers.models.xlm import tokenization_xlm

    return tokenization_xlm


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_unicode_punctuation_equals_transformers(hf_xlm, text):
    assert replace_unicode_punctuation(text) == hf_xlm.replace_unicode_punct(text)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXT, SURROGATES))
def test_non_printing_removal_equals_transformers(hf_xlm, text):
    assert remove_non_printing_characters(text) == hf_xlm.remove_non_printing_char(text)


@settings(max_examples=300, deadline=None)
@given(text=TEXT)
def test_romanian_equals_transformers(hf_xlm, text):
    assert normalise_romanian(text) == hf_xlm.romanian_preprocessing(text)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(TEXT.map(lambda text: "".join(text.split())), max_size=6))
def test_lowercase_and_remove_accents_equals_transformers(hf_xlm, words):
    assert lowercase_and_remove_accents(words) == hf_xlm.lowercase_and_remove_accent(words)


def test_lowercase_and_remove_accents_examples():
    assert lowercase_and_remove_accents(["Été", "MONTRÉAL", "Straße", "ΟΔΟΣ"]) == [
        "ete",
        "montreal",
        "straße",
        "οδος",
    ]
    assert lowercase_and_remove_accents(["a", "\u0301", "b"]) == ["a", "", "b"]  # a lone accent leaves ""


def test_control_characters_are_deleted_not_spaced():
    # The Perl script puts a space; transformers (and so xlm's transformers rules) deletes, gluing the words.
    assert remove_non_printing_characters("tab\there\u200bzero") == "tabherezero"
    assert MosesPipeline("en")("tab\there") == ["tabhere"]


def test_original_rules_put_a_space_for_control_characters():
    # remove-non-printing-char.perl: s/\p{C}/ /g (tests/test_tokenizer_perl.py runs the script itself).
    assert remove_non_printing_characters("tab\there\u200bzero", original=True) == "tab here zero"
    assert MosesPipeline("en", original=True)("tab\there") == ["tab", "here"]


def test_original_rules_of_2018_punctuation():
    assert replace_unicode_punctuation("１２", original=True) == '"2'
    assert replace_unicode_punctuation("１２") == "12"
    # The line's newline counts: a French `."` at the end of a line becomes `".`; English moves quotes after.
    assert PunctuationNormalizer2018("fr")('Il a dit "oui."') == 'Il a dit "oui".'
    assert PunctuationNormalizer2018("en")('He said "yes."') == 'He said "yes."'
    assert PunctuationNormalizer2018("en")("‘a’ ‚b") == '"a" "b'  # before step 1, which makes ’ an apostrophe


def test_french_and_english_apostrophe_rules_differ():
    assert MosesPipeline("fr")("l'année d'été") == ["l'", "année", "d'", "été"]
    assert MosesPipeline("en")("l'année d'été") == ["l", "'année", "d", "'été"]
    assert MosesPipeline("en")("it's John's") == ["it", "'s", "John", "'s"]


def test_nonbreaking_prefixes_are_case_sensitive():
    assert MosesPipeline("en")("See No. 5 here.") == ["See", "No.", "5", "here", "."]
    assert MosesPipeline("en")("see no. 5 here.") == ["see", "no", ".", "5", "here", "."]


def test_unicode_punctuation_before_moses():
    assert MosesPipeline("fr")("« Bonjour »，ça va？") == ['"', "Bonjour", '"', ",", "ça", "va", "?"]
    assert MosesPipeline("en")("Wait… what’s that") == ["Wait", "...", "what", "'s", "that"]


def test_romanian_gets_sennrich_normalisation_only_for_ro():
    assert MosesPipeline("ro")("Şi ţara îşi") == ["Si", "tara", "isi"]
    assert MosesPipeline("en")("Şi ţara") == ["Şi", "ţara"]


@pytest.mark.parametrize("lang", ["zh", "th", "ja"])
def test_languages_needing_a_segmenter_are_refused(lang):
    with pytest.raises(TokenizerError, match=f"language '{lang}' needs .* word segmentation"):
        MosesPipeline(lang)
