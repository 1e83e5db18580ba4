"""BPE (xlm/bpe.py): merges-file reading, the merge loop, and both backends against transformers' `bpe()`."""

from __future__ import annotations

import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlm.bpe import FastBPE, PythonBPE, make_bpe, parse_merges, piece_from_fastbpe, piece_to_fastbpe, read_merges
from xlm.errors import TokenizerError

# Moses never yields whitespace inside a word, and transformers' bpe() joins pieces with spaces: leave it out.
WORDS = st.text(st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=30)
# Words over a small alphabet hit many merges of the real vocabulary, including repeated symbols (aaa).
LATIN_WORDS = st.text(st.sampled_from("aeioulnrstmpdcéèàç'-.0123456789"), min_size=1, max_size=20)


# ---- merges files --------------------------------------------------------------------------------------


def test_merges_keep_first_two_fields_and_skip_blank_lines():
    assert parse_merges("a b 120\n\nab c</w> 7\r\n") == [("a", "b"), ("ab", "c</w>")]


def test_last_merge_counts_without_a_final_newline(tmp_path):
    # transformers' `read().split("\n")[:-1]` would drop ("c", "d"); we read every line (documented choice).
    path = tmp_path / "merges.txt"
    path.write_text("a b\nc d", encoding="utf-8")
    assert read_merges(path) == [("a", "b"), ("c", "d")]


def test_one_field_line_is_an_error_naming_the_line():
    with pytest.raises(TokenizerError, match=r"line 2: a merge needs two symbols"):
        parse_merges("a b\nlonely\n")


def test_unreadable_merges_file_is_a_one_line_error(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read merges file"):
        read_merges(tmp_path / "missing.txt")


def test_duplicate_pair_keeps_its_later_rank():
    bpe = PythonBPE([("a", "b"), ("b", "c</w>"), ("a", "b")])
    assert bpe.ranks == {("a", "b"): 2, ("b", "c</w>"): 1}
    assert bpe.merges == [("b", "c</w>"), ("a", "b")]
    # (b, c</w>) now outranks (a, b): "abc" -> a bc</w>, not ab c</w>.
    assert bpe.segment("abc") == ("a", "bc</w>")


@pytest.mark.parametrize(
    ("token", "piece"),
    [("mon@@", "mon"), ("chat", "chat</w>"), ("a@@b", "a@@b</w>"), ("@@", ""), ("x@@@@", "x@@")],
)
def test_fastbpe_tokens_continue_a_word_only_with_a_final_marker(token, piece):
    # fastBPE looks a piece up as `piece@@` if it continues a word and as `piece` if it ends one.
    assert piece_from_fastbpe(token) == piece
    assert piece_to_fastbpe(piece) == token


# ---- the merge loop ------------------------------------------------------------------------------------


def test_single_character_word_is_one_final_piece():
    assert PythonBPE([]).segment("x") == ("x</w>",)


def test_merges_apply_in_rank_order_not_left_to_right():
    bpe = PythonBPE([("e", "r</w>"), ("l", "o"), ("lo", "w"), ("low", "er</w>")])
    assert bpe.segment("lower") == ("lower</w>",)
    assert bpe.segment("slower") == ("s", "lower</w>")
    assert PythonBPE([("e", "r</w>"), ("w", "e")]).segment("lower") == ("l", "o", "w", "er</w>")


def test_repeated_symbols_merge_left_to_right_without_overlap():
    assert PythonBPE([("a", "a")]).segment("aaaa") == ("aa", "a", "a</w>")
    assert PythonBPE([("a", "a"), ("a", "a</w>")]).segment("aaa") == ("aa", "a</w>")


def test_unknown_pairs_stop_merging():
    assert PythonBPE([("x", "y")]).segment("abc") == ("a", "b", "c</w>")


def test_vocabulary_unmerges_missing_pieces_recursively():
    merges = [("a", "b"), ("ab", "c"), ("abc", "d</w>")]
    assert PythonBPE(merges).segment("abcd") == ("abcd</w>",)
    # abcd</w> is missing: abc + d</w>; abc is missing: ab + c; ab is known.
    assert PythonBPE(merges, vocabulary={"ab", "c", "d</w>"}).segment("abcd") == ("ab", "c", "d</w>")
    # A single character that is missing stays (and becomes <unk>): there is nothing to split.
    assert PythonBPE(merges, vocabulary={"abc"}).segment("abcd") == ("abc", "d</w>")
    # An empty vocabulary limits nothing, as in fastBPE.
    assert PythonBPE(merges, vocabulary=[]).segment("abcd") == ("abcd</w>",)


def test_pickle_keeps_the_vocabulary():
    bpe = PythonBPE([("a", "b"), ("ab", "c</w>")], vocabulary={"ab"})
    clone = pickle.loads(pickle.dumps(bpe))
    assert clone.vocabulary == {"ab"} and clone.segment("abc") == ("ab", "c</w>")


def test_empty_word_is_an_error():
    with pytest.raises(TokenizerError, match="non-empty"):
        PythonBPE([]).segment("")


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr("xlm.bpe.CACHE_LIMIT", 3)
    bpe = PythonBPE([("a", "b")])
    for word in ("ab", "abab", "b", "a"):
        bpe.segment(word)
    assert len(bpe._cache) <= 3 and bpe.segment("ab") == ("a", "b</w>")


def test_pickle_keeps_rules_and_drops_cache():
    bpe = PythonBPE([("a", "b"), ("ab", "c</w>")])
    bpe.segment("abc")
    clone = pickle.loads(pickle.dumps(bpe))
    assert clone.ranks == bpe.ranks and clone._cache == {}
    assert clone.segment("abc") == ("abc</w>",)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(TokenizerError, match="unknown BPE backend 'rust'; choose one of: python, fastbpe"):
        make_bpe([], "rust")


def test_fastbpe_backend_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastBPE", None)  # makes `import fastBPE` raise ImportError
    with pytest.raises(TokenizerError, match="no-build-isolation fastBPE"):
        make_bpe([("a", "b")], "fastbpe")


# ---- against transformers and fastBPE on the real enfr merges ------------------------------------------


@pytest.fixture(scope="module")
def enfr_python_bpe(enfr_tokenizer_dir):
    return PythonBPE(read_merges(enfr_tokenizer_dir / "merges.txt"))


@pytest.fixture(scope="module")
def enfr_fastbpe(enfr_tokenizer_dir, require_fastbpe):
    return FastBPE(read_merges(enfr_tokenizer_dir / "merges.txt"))


def test_enfr_merges_are_read_whole(enfr_python_bpe):
    assert len(enfr_python_bpe.ranks) == 60_000


@settings(max_examples=400, deadline=None)
@given(word=st.one_of(WORDS, LATIN_WORDS))
def test_python_bpe_equals_transformers(enfr_python_bpe, enfr_transformers_tokenizer, word):
    assert " ".join(enfr_python_bpe.segment(word)) == enfr_transformers_tokenizer.bpe(word)


@pytest.mark.fastbpe
@settings(max_examples=400, deadline=None)
@given(word=st.one_of(WORDS, LATIN_WORDS))
def test_fastbpe_equals_python_bpe(enfr_python_bpe, enfr_fastbpe, word):
    assert enfr_fastbpe.segment(word) == enfr_python_bpe.segment(word)


@pytest.mark.fastbpe
def test_fastbpe_backend_pickles(enfr_fastbpe):
    clone = pickle.loads(pickle.dumps(enfr_fastbpe))
    assert clone.name == "fastbpe" and clone.segment("Wikipedia") == enfr_fastbpe.segment("Wikipedia")


@pytest.mark.fastbpe
def test_fastbpe_given_the_vocabulary_unmerges_what_transformers_keeps(
    enfr_vocab_dir, enfr_python_bpe, enfr_transformers_tokenizer, require_fastbpe
):
    # "Rawalpin" is a merge result missing from the enfr vocabulary. transformers keeps it (and maps it to
    # <unk>), as fastBPE without the vocabulary does; fastBPE with the vocabulary splits it back into pieces
    # that are in it (xlm: bpe_with_vocab=True, tests/test_tokenizer_perl.py).
    import fastBPE

    with_vocabulary = fastBPE.fastBPE(str(enfr_vocab_dir / "codes_enfr"), str(enfr_vocab_dir / "vocab_enfr"))
    assert with_vocabulary.apply(["Rawalpinx"]) == ["Raw@@ alpin@@ x"]
    assert enfr_transformers_tokenizer.bpe("Rawalpinx") == "Rawalpin x</w>"
    assert enfr_python_bpe.segment("Rawalpinx") == ("Rawalpin", "x</w>")
    assert "Rawalpin" not in enfr_transformers_tokenizer.get_vocab()
