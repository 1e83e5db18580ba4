"""The `Tokenizer` API (xlm/tokenizer.py) on the real English-French vocabulary and on tiny hand-made ones."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlm.config import PRESETS
from xlm.errors import TokenizerError
from xlm.model import XLM
from xlm.tokenizer import Tokenizer, convert_fastbpe_vocab, read_fastbpe_vocab

REPO_ROOT = Path(__file__).resolve().parent.parent
# Sentences exercising Moses' language rules, accents, case, numbers and unicode punctuation.
SAMPLES = [
    ("Wikipedia was used to", "en"),
    ("Le chat est noir.", "fr"),
    ("C'est l'été à Montréal.", "fr"),
    ("The President of France met No. 5 in the U.S. yesterday…", "en"),
    ("« L’année dernière », dit-il, « 10 000 € ont été dépensés ! »", "fr"),
    ("Don't stop: 3.5% of users' files (e.g. \"a.txt\") weren't saved.", "en"),
]


@pytest.fixture(scope="module")
def enfr(enfr_tokenizer_dir) -> Tokenizer:
    """The transformers-compatible tokenizer of xlm-clm-enfr-1024 (the default preset)."""
    return Tokenizer.from_pretrained(enfr_tokenizer_dir)


@pytest.fixture(scope="module")
def enfr_original(enfr_tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(enfr_tokenizer_dir, preset="original")


def write_fastbpe_pair(directory: Path, cased: bool = True) -> tuple[Path, Path]:
    """A tiny codes + vocab pair in XLM's original formats; `cased=False` writes only lowercase pieces."""
    the = "The" if cased else "the"
    codes = f"l o 10\nlo w</w> 9\ne r</w> 8\nlo w 7\nlow er</w> 6\n{the[0]} h 5\n{the[:2]} e</w> 4\n"
    vocab = f"low 10\nlower 5\n{the} 4\nl@@ 3\no@@ 3\ne@@ 2\nr 2\nw 1\n. 1\nlo@@ 1\nlow@@ 1\ner 1\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "codes").write_text(codes, encoding="utf-8")
    (directory / "vocab").write_text(vocab, encoding="utf-8")
    return directory / "codes", directory / "vocab"


# ---- files: XLM's originals, transformers' layout ------------------------------------------------------


def test_enfr_conversion_gives_the_hub_files(enfr_vocab_dir, tmp_path):
    out = convert_fastbpe_vocab(enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", tmp_path)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 64_139
    assert (out / "vocab.json").stat().st_size == 1_452_740  # the size of the hub's vocab.json
    assert [vocab[piece] for piece in ("<s>", "</s>", "<pad>", "<unk>", "<special9>")] == [0, 1, 2, 3, 13]
    assert [vocab[piece] for piece in (",</w>", ".</w>", "the</w>", "a</w>")] == [14, 15, 16, 17]
    assert (out / "merges.txt").read_bytes() == (enfr_vocab_dir / "codes_enfr").read_bytes()


def test_from_fastbpe_equals_the_converted_files(enfr_vocab_dir, enfr):
    original = Tokenizer.from_fastbpe(
        enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", languages=["en", "fr"]
    )
    assert original.vocab == enfr.vocab and original.bpe.ranks == enfr.bpe.ranks
    assert original.lang2id == enfr.lang2id == {"en": 0, "fr": 1}
    assert original.preset == "original" and not original.lowercase_and_remove_accents


def test_fastbpe_vocab_follows_xlm_dictionary_rules(tmp_path):
    path = tmp_path / "vocab"
    path.write_text("le 9\nmon@@ 5\nle 3\nbad line here\nsep\u2028x 2\n<s> 1\nchat 4\n", encoding="utf-8")
    vocab = read_fastbpe_vocab(path)
    # duplicates, lines without two fields, U+2028 and special tokens are skipped, as XLM's Dictionary does
    assert list(vocab)[14:] == ["le</w>", "mon", "chat</w>"]
    assert vocab["chat</w>"] == 16
    path.write_text("le nine\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 1: expected `token count`"):
        read_fastbpe_vocab(path)


def test_converted_merges_end_with_a_newline(tmp_path):
    codes, vocab = write_fastbpe_pair(tmp_path)
    codes.write_text(codes.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    out = convert_fastbpe_vocab(codes, vocab, tmp_path / "out")
    assert (out / "merges.txt").read_text(encoding="utf-8").endswith("\nTh e</w> 4\n")


def test_save_pretrained_is_read_back_by_transformers(
    enfr, enfr_original, transformers_module, transformers_ids, tmp_path
):
    for ours in (enfr, enfr_original):
        directory = ours.save_pretrained(tmp_path / ours.preset)
        hf = transformers_module.XLMTokenizer.from_pretrained(directory)
        assert hf.lang2id == {"en": 0, "fr": 1}
        assert hf.do_lowercase_and_remove_accent == ours.lowercase_and_remove_accents
        for text, lang in SAMPLES:
            assert transformers_ids(hf, text, lang) == Tokenizer.from_pretrained(directory).encode(text, lang)
            assert transformers_ids(hf, text, lang, False) == ours.encode(text, lang, add_special_tokens=False)
        reloaded = Tokenizer.from_pretrained(directory, preset=ours.preset)
        assert (reloaded.vocab, reloaded.bpe.ranks, reloaded.lang2id) == (
            ours.vocab,
            ours.bpe.ranks,
            ours.lang2id,
        )
        assert reloaded.lowercase_and_remove_accents == ours.lowercase_and_remove_accents


# ---- presets -------------------------------------------------------------------------------------------


def test_readme_vectors(enfr):
    assert enfr.encode("Wikipedia was used to", "en") == [0, 4018, 5545, 51104, 32, 308, 18, 1]
    assert enfr.encode("Le chat est noir.", "en") == [0, 33, 5890, 61, 6342, 15, 1]
    assert enfr.encode("Le chat est noir.", "fr") == [0, 33, 5890, 61, 6342, 15, 1]


def test_transformers_preset_lowercases_and_strips_accents(enfr):
    assert enfr.preset == "transformers" and enfr.lowercase_and_remove_accents
    assert enfr.tokenize("L'été à Paris.", "fr") == ["l'</w>", "ete</w>", "a</w>", "paris</w>", ".</w>"]
    assert enfr.encode("L'été à Paris.", "fr") == [0, 35, 26699, 17, 37132, 15, 1]


def test_original_preset_keeps_case_and_accents_and_frames_with_eos(enfr_original):
    assert enfr_original.preset == "original" and not enfr_original.lowercase_and_remove_accents
    vocab = enfr_original.vocab
    assert (vocab["The</w>"], vocab["the</w>"], vocab["été</w>"], vocab["ete</w>"]) == (30, 16, 146, 26699)
    assert enfr_original.encode("The summer", "en") == [1, 30, 1132, 1]
    assert enfr_original.tokenize("L'été à Paris.", "fr") == [
        "L'</w>",
        "été</w>",
        "à</w>",
        "Paris</w>",
        ".</w>",
    ]
    assert enfr_original.encode("L'été à Paris.", "fr") == [1, 195, 146, 31, 610, 15, 1]


def test_pairs_are_framed_per_preset(enfr, enfr_original):
    first, second = [10, 11], [12]
    assert enfr.frame(first, second) == [0, 10, 11, 1, 12, 1]
    assert enfr_original.frame(first, second) == [1, 10, 11, 1, 12, 1]
    assert enfr.encode("noir", "fr", add_special_tokens=False) == [6342]


def test_original_preset_lowercases_only_a_lowercased_vocabulary(tmp_path):
    cased = Tokenizer.from_fastbpe(*write_fastbpe_pair(tmp_path / "cased", cased=True))
    uncased = Tokenizer.from_fastbpe(*write_fastbpe_pair(tmp_path / "uncased", cased=False))
    assert not cased.lowercase_and_remove_accents and uncased.lowercase_and_remove_accents
    assert cased.tokenize("The lower", "en") == ["The</w>", "lower</w>"]
    assert uncased.tokenize("The LOWER", "en") == ["the</w>", "lower</w>"]
    assert Tokenizer.from_fastbpe(
        *write_fastbpe_pair(tmp_path / "c2"), preset="transformers"
    ).lowercase_and_remove_accents


def test_transformers_preset_follows_tokenizer_config(tmp_path):
    out = convert_fastbpe_vocab(*write_fastbpe_pair(tmp_path), tmp_path / "hf")
    default = Tokenizer.from_pretrained(out)  # no tokenizer_config.json: transformers' defaults
    assert default.lowercase_and_remove_accents and default.lang2id is None
    (out / "tokenizer_config.json").write_text('{"do_lowercase_and_remove_accent": false}', encoding="utf-8")
    assert Tokenizer.from_pretrained(out).tokenize("The lower", "en") == ["The</w>", "lower</w>"]


# ---- languages -----------------------------------------------------------------------------------------


def test_unknown_language_lists_the_known_ones(enfr):
    assert enfr.languages == ("en", "fr") and enfr.lang_id("fr") == 1
    with pytest.raises(TokenizerError, match=r"unknown language 'de'; this tokenizer knows: en, fr"):
        enfr.encode("Hallo Welt", "de")
    with pytest.raises(TokenizerError, match="a language is a name"):
        enfr.encode("hello", None)


def test_single_language_model_takes_any_moses_language(tmp_path):
    tokenizer = Tokenizer.from_fastbpe(*write_fastbpe_pair(tmp_path))
    assert tokenizer.languages == () and tokenizer.lang_id("de") == 0
    assert tokenizer.encode("lower", "de") == [1, tokenizer.vocab["lower</w>"], 1]
    assert tokenizer.batch(["low", "lower"], "en").langs.eq(0).all()


def test_segmenter_languages_are_refused_even_when_the_model_has_them(tmp_path):
    tokenizer = Tokenizer.from_fastbpe(*write_fastbpe_pair(tmp_path), languages={"en": 0, "zh": 1})
    assert tokenizer.lang_id("zh") == 1
    with pytest.raises(TokenizerError, match="needs Chinese word segmentation"):
        tokenizer.encode("你好", "zh")


# ---- special tokens, decode ----------------------------------------------------------------------------


def test_literal_special_tokens_stay_atomic(enfr, enfr_transformers_tokenizer, transformers_ids):
    text = "a </s> b<special1>c <unk> <special10> x<s>y<pad>"
    assert enfr.tokenize(text, "en")[:6] == ["a</w>", "</s>", "b</w>", "<special1>", "c</w>", "<unk>"]
    assert enfr.encode(text, "en") == transformers_ids(enfr_transformers_tokenizer, text, "en")
    assert enfr.encode("l'<special1>", "fr") == [0, 35, 5, 1]


def test_decode_matches_transformers(enfr, enfr_transformers_tokenizer):
    ids = enfr.encode("C'est l'été à Montréal.", "fr")
    assert enfr.decode(ids) == "<s>c' est l' ete a montreal . </s>" == enfr_transformers_tokenizer.decode(ids)
    assert enfr.decode(ids, skip_special_tokens=True) == "c' est l' ete a montreal ."
    assert enfr.decode(torch.tensor(ids)) == enfr.decode(ids)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([0, 64_139], r"token id 64139 is outside the vocabulary \(0..64138\)"),
        ([-1], "token id -1 is outside"),
        ([1.0], "token ids must be integers, got 1.0"),
        ([True], "token ids must be integers, got True"),
        ("abc", "token ids must be integers, got 'a'"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            r"decode takes one sequence \(a 1-D tensor\), got shape \(2, 3\)",
        ),
    ],
)
def test_decode_rejects_what_is_not_a_token_id(enfr, ids, message):
    with pytest.raises(TokenizerError, match=message):
        enfr.decode(ids)


def test_text_must_be_a_string(enfr):
    with pytest.raises(TokenizerError, match="text must be a str, got bytes"):
        enfr.encode(b"bytes", "en")


# ---- batches -------------------------------------------------------------------------------------------


def test_batch_pads_right_with_per_position_languages(enfr):
    batch = enfr.batch(["Le chat est noir.", "Hello world!"], ["fr", "en"])
    assert batch.keys() == ["input_ids", "attention_mask", "langs"]
    assert all(batch[key].dtype == torch.long for key in batch.keys())  # noqa: SIM118 (a Batch is no dict)
    assert batch.input_ids.tolist() == [[0, 33, 5890, 61, 6342, 15, 1], [0, 513, 5739, 207, 262, 1, 2]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1] * 6 + [0]]
    assert batch.langs.tolist() == [[1] * 7, [0] * 7]
    assert batch.lengths.tolist() == [7, 6]


def test_batch_pads_left_for_generation(enfr):
    batch = enfr.batch(["Le chat est noir.", "Hello world!"], "en", padding_side="left")
    assert batch.input_ids[1].tolist() == [2, 0, 513, 5739, 207, 262, 1]
    assert batch.attention_mask[1].tolist() == [0] + [1] * 6
    assert batch.langs.eq(0).all() and batch.to("cpu").input_ids.equal(batch.input_ids)


def test_batch_feeds_a_transformers_model_by_name(enfr, transformers_module):
    config = transformers_module.XLMConfig(
        vocab_size=enfr.vocab_size, emb_dim=16, n_layers=1, n_heads=2, n_langs=2, use_lang_emb=True
    )
    model = transformers_module.XLMWithLMHeadModel(config).eval()
    batch = enfr.batch(["Le chat est noir.", "Hello world!"], ["fr", "en"])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 7, enfr.vocab_size)


def test_batch_feeds_our_model_by_name(enfr):
    model = XLM(dataclasses.replace(PRESETS["xlm-clm-enfr-1024"], dim=16, n_layers=1, n_heads=2)).eval()
    batch = enfr.batch(["Le chat est noir.", "Hello world!"], ["fr", "en"])
    with torch.no_grad():
        logits = model(**batch, causal=True)
        alone = model(**enfr.batch(["Hello world!"], "en"), causal=True)
    assert logits.shape == (2, 7, enfr.vocab_size)
    torch.testing.assert_close(logits[1, :6], alone[0], rtol=0, atol=1e-5)  # the padding changes nothing


def test_pad_takes_encoded_lines(enfr):
    lines = ["Le chat est noir.", "Bonjour"]
    batch = enfr.pad(enfr.encode_lines(lines, "fr"), "fr")
    assert batch.input_ids.equal(enfr.batch(lines, "fr").input_ids)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.batch("one text", "en"), "expected a list of texts, got one str"),
        (lambda t: t.batch(["a", "b"], ["en"]), "got 1 languages for 2 texts"),
        (lambda t: t.batch(["a", 3], "en"), "text 1 must be a str, got int"),
        (lambda t: t.batch([], "en"), "cannot make a batch of zero sequences"),
        (
            lambda t: t.batch(["a b c d"], "en", max_length=4),
            "sequence 0 has 6 tokens, more than max_length=4",
        ),
        (lambda t: t.batch(["a"], "en", padding_side="middle"), "padding_side must be 'right' or 'left'"),
        (lambda t: t.pad([[0, 70_000]], "en"), "token id 70000 is outside the vocabulary"),
        (lambda t: t.batch(["a"], 3), "langs must be a language name or one name per text"),
    ],
)
def test_batch_errors(enfr, call, message):
    with pytest.raises(TokenizerError, match=message):
        call(enfr)


# ---- bulk encoding -------------------------------------------------------------------------------------


def test_encode_lines_with_workers_keeps_order(enfr, gettext_text):
    lines = gettext_text["fr"][:600] + gettext_text["en"][:600]
    langs = ["fr"] * 600 + ["en"] * 600
    expected = [enfr.encode(line, lang) for line, lang in zip(lines, langs, strict=True)]
    assert enfr.encode_lines(lines, langs) == expected
    assert enfr.encode_lines(lines, langs, workers=2, chunk_size=100) == expected
    assert enfr.encode_lines([], "fr", workers=2) == []


def test_encode_lines_workers_keep_the_options(enfr_tokenizer_dir):
    # The trainer binarizes with encode_lines: the options must reach the worker processes.
    tokenizer = Tokenizer.from_pretrained(
        enfr_tokenizer_dir, preset="original", bpe_with_vocab=True, parse_special_tokens=True
    )
    lines = ["Rawalpinx </s> a\tb", "Le chat."]
    assert tokenizer.tokenize(lines[0], "en") == ["Raw", "alpin", "x</w>", "</s>", "a</w>", "b</w>"]
    expected = [tokenizer.encode(line, "en") for line in lines]
    assert tokenizer.encode_lines(lines, "en", workers=2, chunk_size=1) == expected


def test_encode_lines_checks_before_starting_workers(enfr):
    with pytest.raises(TokenizerError, match="unknown language 'de'"):
        enfr.encode_lines(["a", "b"], "de", workers=2)
    with pytest.raises(TokenizerError, match="workers and chunk_size must be at least 1"):
        enfr.encode_lines(["a"], "en", workers=0)
    with pytest.raises(TokenizerError, match="expected a list of texts"):
        enfr.encode_lines("not a list", "en")


def test_encode_lines_works_with_spawned_workers(enfr_tokenizer_dir, tmp_path):
    # macOS and Windows start workers with "spawn": the tokenizer must pickle and the workers must import.
    script = tmp_path / "spawn_check.py"
    script.write_text(
        textwrap.dedent(f"""
        import multiprocessing
        from xlm.tokenizer import Tokenizer

        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            tokenizer = Tokenizer.from_pretrained({str(enfr_tokenizer_dir)!r})
            lines = ["Le chat est noir.", "C'est l'été.", "Bonjour à tous", "Il pleut."] * 3
            expected = [tokenizer.encode(line, "fr") for line in lines]
            assert tokenizer.encode_lines(lines, "fr", workers=2, chunk_size=2) == expected
            print("spawn ok")
        """),
        encoding="utf-8",
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0 and "spawn ok" in result.stdout, result.stderr


def test_tokenizer_pickles(enfr):
    enfr.encode("Bonjour", "fr")  # fills the caches that pickling leaves out
    clone = pickle.loads(pickle.dumps(enfr))
    assert clone._pipelines == {} and clone.bpe._cache == {}
    assert [clone.encode(text, lang) for text, lang in SAMPLES] == [enfr.encode(text, lang) for text, lang in SAMPLES]


# ---- files that cannot be used -------------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    return convert_fastbpe_vocab(*write_fastbpe_pair(tmp_path), tmp_path / "hf")


def _edit_vocab(directory: Path, edit) -> None:
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    (directory / "vocab.json").write_text(json.dumps(edit(vocab)), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "vocab.json").unlink(), "cannot read .*vocab.json"),
        (
            lambda d: (d / "vocab.json").write_text("{not json", encoding="utf-8"),
            "vocab.json is not valid JSON",
        ),
        (lambda d: (d / "vocab.json").write_text("[1, 2]", encoding="utf-8"), "must hold a JSON object"),
        (lambda d: _edit_vocab(d, lambda v: {**v, "low</w>": "14"}), "must map every piece to an integer id"),
        (
            lambda d: _edit_vocab(d, lambda v: {k: i for k, i in v.items() if k != "<pad>"}),
            "gives <pad> the id None",
        ),
        (lambda d: _edit_vocab(d, lambda v: {**v, "extra</w>": 999}), "ids must be 0..N-1, each used once"),
        (lambda d: (d / "merges.txt").write_text("a b\nc\n", encoding="utf-8"), "line 2: a merge needs two"),
        (
            lambda d: (d / "tokenizer_config.json").write_text('{"do_lowercase_and_remove_accent": "yes"}'),
            "do_lowercase_and_remove_accent must be true or false",
        ),
        (
            lambda d: (d / "tokenizer_config.json").write_text('{"lang2id": {"en": 0, "fr": 2}}'),
            "lang2id must give the ids 0..1 once each",
        ),
    ],
)
def test_unusable_files_give_one_line_errors(hf_dir, damage, message):
    damage(hf_dir)
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_pretrained(hf_dir)


def test_bad_arguments_give_one_line_errors(hf_dir, tmp_path):
    with pytest.raises(
        TokenizerError, match=r"no checkpoint at .*nowhere: no such file or directory, and not a hub id"
    ):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(TokenizerError, match="unknown preset 'hf'; choose one of: transformers, original"):
        Tokenizer.from_pretrained(hf_dir, preset="hf")
    with pytest.raises(TokenizerError, match="languages must be a list of names"):
        Tokenizer.from_fastbpe(*write_fastbpe_pair(tmp_path / "pair"), languages="en")


def test_repr_says_what_matters(enfr):
    assert repr(enfr) == (
        "Tokenizer(vocab_size=64139, languages=['en', 'fr'], preset='transformers', "
        "lowercase_and_remove_accents=True, bpe_backend='python')"
    )


# ---- properties ----------------------------------------------------------------------------------------

ANY_TEXT = st.one_of(
    st.text(),
    st.text(st.characters(codec=None, exclude_categories=())),  # lone surrogates and unassigned code points too
    st.lists(
        st.sampled_from(["</s>", "<special1>", "<s", "l'", "’", "…", "。", "\t", "\u00a0", "\u0301", " ", "é"])
    ).map("".join),
)
LOWERCASE_WORDS = st.lists(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=1, max_size=12), min_size=1)
ACCENTED_WORDS = st.lists(st.text(st.sampled_from("abcdeéèêàâçîôûùëïœlmnrst"), min_size=1, max_size=12), min_size=1)


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT, lang=st.sampled_from(["en", "fr"]))
def test_encode_never_crashes(enfr, enfr_original, text, lang):
    for tokenizer in (enfr, enfr_original):
        ids = tokenizer.encode(text, lang)
        assert ids[-1] == 1 and all(0 <= token_id < tokenizer.vocab_size for token_id in ids)


@settings(max_examples=200, deadline=None)
@given(words=LOWERCASE_WORDS)
def test_decode_inverts_encode_on_tokenized_lowercase_text(enfr, words):
    text = " ".join(words)
    assert enfr.decode(enfr.encode(text, "en", add_special_tokens=False)) == text


@settings(max_examples=200, deadline=None)
@given(words=ACCENTED_WORDS, lang=st.sampled_from(["en", "fr"]))
def test_decode_inverts_encode_with_accents_in_the_original_preset(enfr_original, words, lang):
    text = " ".join(words)
    assert enfr_original.decode(enfr_original.encode(text, lang)) == f"</s>{text} </s>"


@settings(max_examples=100, deadline=None)
@given(bad_id=st.one_of(st.integers(max_value=-1), st.integers(min_value=64_139)))
def test_decode_of_an_id_outside_the_vocabulary_is_a_clear_error(enfr, bad_id):
    with pytest.raises(TokenizerError, match=f"token id {bad_id} is outside the vocabulary"):
        enfr.decode([0, 16, bad_id, 1])
