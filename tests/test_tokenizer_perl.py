"""The original preset against XLM's own preprocessing, line for line: the Moses Perl scripts of 2018, then fastBPE.

The reference is what made XLM's English-French data (facebookresearch/XLM `tools/tokenize.sh`, then fastBPE's
`applybpe`): four Perl scripts from ../shared/moses-2018 (env XLM_MOSES_2018), each in its own process, over a
whole file of lines per language, then fastBPE on the words, then XLM's dictionary (`vocab_enfr` line i -> id
14 + i, anything else `<unk>` 3). The corpus is every gettext line (tests/conftest.py); the hand-made sentences
below each exercise one way in which the original preset must follow the Perl scripts and not transformers.
Without perl or the scripts these tests skip, and fail where `CI` is 1/true.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import env_flag, skip_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

from xlm.bpe import make_bpe
from xlm.tokenizer import EOS_ID, UNK_ID, Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
LANGS = ("en", "fr")


def moses_scripts_dir() -> Path:
    """The 2018 Moses scripts: env XLM_MOSES_2018, else ../shared/moses-2018 (third-party, read in place)."""
    return Path(os.environ.get("XLM_MOSES_2018", REPO_ROOT.parent / "shared" / "moses-2018")) / "scripts"


def perl_commands(scripts: Path, lang: str) -> list[list[str]]:
    """XLM's preprocessing of one language, one command per step (the order of its tools/tokenize.sh)."""
    tokenizer = scripts / "tokenizer"
    return [
        ["perl", str(tokenizer / "replace-unicode-punctuation.perl")],
        ["perl", str(tokenizer / "normalize-punctuation.perl"), "-l", lang],
        ["perl", str(tokenizer / "remove-non-printing-char.perl")],
        ["perl", str(tokenizer / "tokenizer.perl"), "-l", lang, "-no-escape", "-q"],
    ]


@pytest.fixture(scope="session")
def moses_2018() -> Path:
    scripts = moses_scripts_dir()
    missing = [command[1] for command in perl_commands(scripts, "en") if not Path(command[1]).is_file()]
    if shutil.which("perl") is None or missing:
        reason = "perl is not installed" if shutil.which("perl") is None else f"missing {', '.join(missing)}"
        skip_or_fail(f"{reason} (set XLM_MOSES_2018 to the moses-2018 folder)", required=env_flag("CI"))
    return scripts


def run_perl(scripts: Path, lines: list[str], lang: str, directory: Path) -> list[str]:
    """The four scripts over `lines` (no newline inside), chained by pipes as in a shell: one output per line.

    PERL* variables are dropped: PERL_UNICODE would change how the byte-oriented scripts read their input.
    """
    source = directory / f"{lang}.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PERL")}
    processes: list[subprocess.Popen] = []
    with source.open("rb") as stdin:
        for command in perl_commands(scripts, lang):
            upstream = processes[-1].stdout if processes else stdin
            processes.append(subprocess.Popen(command, stdin=upstream, stdout=subprocess.PIPE, env=environment))
            if upstream is not stdin:
                upstream.close()  # only the next step reads it: a step that dies is seen by its neighbour
        output, _ = processes[-1].communicate()
    codes = [process.wait() for process in processes]
    assert codes == [0, 0, 0, 0], f"the Perl pipeline failed: exit codes {codes}"
    tokenized = output.decode("utf-8").split("\n")
    assert tokenized[-1] == "" and len(tokenized) == len(lines) + 1, "the Perl pipeline lost or added lines"
    return tokenized[:-1]


# ---- the reference: fastBPE on the Perl words, ids from XLM's dictionary --------------------------------------


@pytest.fixture(scope="session")
def xlm_dictionary(enfr_vocab_dir) -> dict[str, int]:
    """XLM's `Dictionary` of vocab_enfr, independently of xlm: fastBPE token (`mon@@`, `chat`) -> id."""
    tokens = [line.split()[0] for line in (enfr_vocab_dir / "vocab_enfr").read_text(encoding="utf-8").splitlines()]
    return {token: 14 + index for index, token in enumerate(tokens)}


@pytest.fixture(scope="session")
def fastbpe_applier(enfr_vocab_dir, require_fastbpe):
    """`applier(words, with_vocab)` -> fastBPE's pieces of each word, in its own notation (`Raw@@`, `x`)."""
    import fastBPE

    codes, vocab = str(enfr_vocab_dir / "codes_enfr"), str(enfr_vocab_dir / "vocab_enfr")
    appliers = {False: fastBPE.fastBPE(codes), True: fastBPE.fastBPE(codes, vocab)}

    def apply(words: list[str], with_vocab: bool) -> list[list[str]]:
        # One word per "sentence", so that a word's pieces are never confused with the next word's.
        return [output.split(" ") for output in appliers[with_vocab].apply(words)]

    return apply


def reference_pieces_and_ids(
    perl_lines: list[str], fastbpe_applier, dictionary: dict[str, int], with_vocab: bool
) -> tuple[list[list[str]], list[list[int]]]:
    """Each line's pieces in transformers' notation (`Raw`, `x</w>`) and ids, from the Perl output."""
    words_per_line = [line.split() for line in perl_lines]
    segmented = iter(fastbpe_applier([word for words in words_per_line for word in words], with_vocab))
    pieces, ids = [], []
    for words in words_per_line:
        tokens = [token for _ in words for token in next(segmented)]
        ids.append([dictionary.get(token, UNK_ID) for token in tokens])
        # fastBPE marks every piece but a word's last with "@@"; transformers marks the last with "</w>".
        pieces.append([token[:-2] if token.endswith("@@") else token + "</w>" for token in tokens])
    return pieces, ids


# ---- every gettext line ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def perl_corpus(moses_2018, gettext_text, tmp_path_factory) -> dict[str, list[str]]:
    directory = tmp_path_factory.mktemp("perl-corpus")
    return {lang: run_perl(moses_2018, gettext_text[lang], lang, directory) for lang in LANGS}


def differences(lines: list[str], ours: list, theirs: list) -> tuple[int, str]:
    """How many lines differ, and the first three, for a failure message."""
    differing = [(line, a, b) for line, a, b in zip(lines, ours, theirs, strict=True) if a != b]
    shown = "\n".join(f"  {line!r}\n    ours {a}\n    perl {b}" for line, a, b in differing[:3])
    return len(differing), shown


@pytest.mark.fastbpe
@pytest.mark.parametrize("lang", LANGS)
def test_original_preset_equals_perl_and_fastbpe_on_every_corpus_line(
    enfr_vocab_dir, gettext_text, perl_corpus, fastbpe_applier, xlm_dictionary, report, lang
):
    lines = gettext_text[lang]
    pieces, ids = reference_pieces_and_ids(perl_corpus[lang], fastbpe_applier, xlm_dictionary, with_vocab=False)
    original = Tokenizer.from_fastbpe(enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", languages=LANGS)
    our_ids = original.encode_lines(lines, lang, add_special_tokens=False, workers=2)
    count, shown = differences(lines, our_ids, ids)
    assert count == 0, f"ids: {count:,} of {len(lines):,} {lang} lines differ from the Perl pipeline:\n{shown}"
    # An id other than <unk> names its piece, so only lines with an <unk> need tokenize() to compare pieces.
    piece_of = {index: piece for piece, index in original.vocab.items()}
    our_pieces = [
        original.tokenize(line, lang) if UNK_ID in line_ids else [piece_of[index] for index in line_ids]
        for line, line_ids in zip(lines, our_ids, strict=True)
    ]
    count, shown = differences(lines, our_pieces, pieces)
    assert count == 0, f"pieces: {count:,} of {len(lines):,} {lang} lines differ from the Perl pipeline:\n{shown}"
    report(f"original preset = Perl Moses 2018 + fastBPE ({lang}): {len(lines):,} of {len(lines):,} lines equal")


# Words that reach the two merge results missing from the enfr vocabulary (`Rawalpin`, `..`), besides the corpus.
UNMERGED_WORDS = ["Rawalpinx", "Rawalpindi", "a..b", "x..", "...", "Rawalpin..z"]


@pytest.mark.fastbpe
@pytest.mark.parametrize("backend", ["python", "fastbpe"])
def test_bpe_with_vocab_equals_fastbpe_with_vocab_on_the_corpus_words(
    enfr_vocab_dir, perl_corpus, fastbpe_applier, xlm_dictionary, backend
):
    # XLM's valid/test data: applybpe with the vocabulary. The words are the Perl output, so this checks BPE only.
    corpus_words = {word for lang in LANGS for line in perl_corpus[lang] for word in line.split()}
    words = sorted(corpus_words | set(UNMERGED_WORDS))
    tokenizer = Tokenizer.from_fastbpe(
        enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", bpe_backend=backend, bpe_with_vocab=True
    )
    pieces, ids = reference_pieces_and_ids(words, fastbpe_applier, xlm_dictionary, with_vocab=True)
    ours = [list(tokenizer.bpe.segment(word)) for word in words]
    count, shown = differences(words, ours, pieces)
    assert count == 0, f"{count:,} of {len(words):,} words differ from fastBPE with the vocabulary:\n{shown}"
    assert [[tokenizer.vocab.get(piece, UNK_ID) for piece in word_pieces] for word_pieces in ours] == ids
    without_vocab, _ = reference_pieces_and_ids(words, fastbpe_applier, xlm_dictionary, with_vocab=False)
    unmerged = {word for word, a, b in zip(words, pieces, without_vocab, strict=True) if a != b}
    assert unmerged == {"Rawalpinx", "a..b", "Rawalpin..z"}  # the corpus never reaches them


@pytest.mark.fastbpe
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bpe_with_vocab_equals_fastbpe_on_random_merges_and_vocabularies(require_fastbpe, tmp_path_factory, data):
    # Small alphabets and random vocabularies make un-merging recurse several levels deep, which the enfr files
    # (two merge results missing from the vocabulary) hardly do.
    import fastBPE

    symbols = ["a", "b", "c", "a</w>", "b</w>", "c</w>"]
    merges: list[tuple[str, str]] = []
    for _ in range(data.draw(st.integers(1, 25))):
        left = data.draw(st.sampled_from([s for s in symbols if not s.endswith("</w>")]))
        right = data.draw(st.sampled_from(symbols))
        if (left + right) not in symbols:  # fastBPE requires every merge result to be new
            merges.append((left, right))
            symbols.append(left + right)
    vocabulary = data.draw(st.sets(st.sampled_from(symbols), min_size=1))  # fastBPE ignores an empty one
    words = data.draw(st.lists(st.text("abc", min_size=1, max_size=12), min_size=1, max_size=10))
    directory = tmp_path_factory.mktemp("bpe")
    (directory / "codes").write_text("".join(f"{a} {b} 1\n" for a, b in merges), encoding="utf-8")
    fastbpe_tokens = [p[:-4] if p.endswith("</w>") else p + "@@" for p in sorted(vocabulary)]
    (directory / "vocab").write_text("".join(f"{token} 1\n" for token in fastbpe_tokens), encoding="utf-8")
    reference = fastBPE.fastBPE(str(directory / "codes"), str(directory / "vocab")).apply(words)
    ours = make_bpe(merges, "python", vocabulary=vocabulary)
    for word, expected in zip(words, reference, strict=True):
        tokens = expected.split(" ")
        assert list(ours.segment(word)) == [t[:-2] if t.endswith("@@") else t + "</w>" for t in tokens], word


# ---- hand-made sentences, one group per way in which the Perl scripts differ from transformers -----------------

# (language, sentence): each is run through the Perl scripts in the test and compared word for word.
HAND_MADE = {
    "control characters become spaces, not nothing": [
        ("en", "-w\twrite the file"),
        ("en", "soft\u00adhyphen and zero\u200bwidth space"),
        ("en", "\ufeffA byte order mark, a bell\x07 and a vertical\x0btab"),
        ("fr", "Colonne\tsuivante\x0cpage"),
        ("en", "carriage\rreturn is deleted by the normaliser"),
    ],
    "normalize-punctuation of 2018": [
        ("en", "‘Quoted’ in single quotes, ‚low‘ too"),
        ("en", "It‘s a letter‘s quote"),
        ("fr", "Il a dit « c'est fini.\u00a0»"),
        ("fr", "Il a dit « c'est fini. » avec des espaces simples"),
        ("fr", 'Il a répondu "oui."'),
        ("fr", 'Elle a dit "non." Puis "si."'),
        ("en", 'He said "yes." and left.'),
        ("fr", "Un prix de 5\u00a0000 euros\u00a0!"),
    ],
    "replace-unicode-punctuation of 2018": [
        ("en", "Page １ of ２, ３ left"),
        ("en", "Done。 Next．Then。\tthe tab stays"),
    ],
    "tokenizer.perl of 2018 keeps the dot of a line-final prefix": [
        ("en", "He moved to Washington D.C."),
        ("en", "Apples, pears etc."),
        ("en", "It costs 5 Rs."),
        ("en", "Pay Rs. 500 at 5 p.m."),
        ("fr", "Voir le chapitre %d."),
        ("fr", "Il est arrivé à 9 h. Puis M. Dupont"),
    ],
    "literal special tokens are text": [
        ("en", "Use </s> as the end marker"),
        ("fr", "Le jeton <special1> masque un mot, <s> ouvre"),
    ],
}
HAND_MADE_CASES = [(group, lang, text) for group, cases in HAND_MADE.items() for lang, text in cases]


@pytest.fixture(scope="module")
def perl_hand_made(moses_2018, tmp_path_factory) -> dict[tuple[str, str], str]:
    """(lang, sentence) -> the Perl output, one Perl run per language."""
    directory = tmp_path_factory.mktemp("perl-hand-made")
    outputs = {}
    for lang in LANGS:
        texts = [text for _, case_lang, text in HAND_MADE_CASES if case_lang == lang]
        tokenized = run_perl(moses_2018, texts, lang, directory)
        outputs |= {(lang, text): line for text, line in zip(texts, tokenized, strict=True)}
    return outputs


@pytest.fixture(scope="module")
def original(enfr_vocab_dir) -> Tokenizer:
    return Tokenizer.from_fastbpe(enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", languages=LANGS)


def words_of(pieces: list[str]) -> list[str]:
    """The words that BPE pieces spell: `["Raw", "alpin", "x</w>"]` -> `["Rawalpinx"]`."""
    return "".join(pieces).replace("</w>", " ").split()


@pytest.mark.parametrize(("group", "lang", "text"), HAND_MADE_CASES)
def test_hand_made_sentences_equal_perl(original, perl_hand_made, group, lang, text):
    assert words_of(original.tokenize(text, lang)) == perl_hand_made[lang, text].split(), group


# Building blocks of random lines: what the four scripts treat specially, and ordinary words between them.
RANDOM_PARTS = [
    *" \t\x0b\x0c\r\x07\x1f\x7f\x85\u00a0\u00ad\u200b\u2028\u3000\ufeff",  # spaces and C* characters
    *"，。．、”“∶：？《》）！（；」「０１２３４５６７８９～’…━〈〉【】％",  # replace-unicode-punctuation
    *"„–—´‘‚«»º`'\".,;:!?%()[]{}<>/\\@#$&*+=-_|~^",  # normalize-punctuation, tokenizer
    *"éÉàçœßñøåΣσπЖжΩ",  # letters of other scripts
    *("etc.", "D.C.", "p.m.", "Mr.", "No.", "Rs.", "St.", "l'", "it's", "...", "--", "5,300", "3.14", "''", "``"),
    *("</s>", "<special1>", "The", "chat", "Montréal", "x", "42"),
]


@pytest.fixture(scope="module")
def random_lines() -> dict[str, list[str]]:
    """1,500 random lines per language from RANDOM_PARTS, the same on every run (seeded)."""
    generator = random.Random(0)
    return {
        lang: ["".join(generator.choices(RANDOM_PARTS, k=generator.randint(1, 30))) for _ in range(1500)]
        for lang in LANGS
    }


@pytest.mark.parametrize("lang", LANGS)
def test_random_lines_equal_perl(original, moses_2018, random_lines, tmp_path, lang):
    lines = random_lines[lang]
    perl_lines = run_perl(moses_2018, lines, lang, tmp_path)
    ours = [words_of(original.tokenize(line, lang)) for line in lines]
    count, shown = differences(lines, ours, [line.split() for line in perl_lines])
    assert count == 0, f"{count:,} of {len(lines):,} random {lang} lines differ from the Perl pipeline:\n{shown}"


def test_hand_made_sentences_show_what_changed(original, perl_hand_made):
    # The expected Perl outputs written out, so that the page and the reader see what each rule does.
    def perl(lang: str, text: str) -> str:
        return perl_hand_made[lang, text]

    assert perl("en", "-w\twrite the file") == "-w write the file"
    assert perl("en", "carriage\rreturn is deleted by the normaliser").startswith("carriagereturn ")
    assert perl("en", "‘Quoted’ in single quotes, ‚low‘ too") == '" Quoted \' in single quotes , " low " too'
    assert perl("fr", "Il a dit « c'est fini.\u00a0»") == 'Il a dit " c\' est fini " .'
    assert perl("fr", 'Il a répondu "oui."') == 'Il a répondu " oui " .'
    assert perl("en", "Page １ of ２, ３ left") == 'Page " of 2 , 3 left'
    assert perl("en", "He moved to Washington D.C.") == "He moved to Washington D.C."
    assert perl("en", "Use </s> as the end marker") == "Use < / s > as the end marker"


def test_literal_special_tokens_are_parsed_only_where_asked(enfr_vocab_dir, original):
    text = "Use </s> as the end marker"
    assert original.tokenize(text, "en")[1:5] == ["<</w>", "/</w>", "s</w>", "></w>"]
    assert EOS_ID not in original.encode(text, "en", add_special_tokens=False)
    parsing = Tokenizer.from_fastbpe(
        enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr", languages=LANGS, parse_special_tokens=True
    )
    assert parsing.tokenize(text, "en")[1] == "</s>"
    assert parsing.encode(text, "en", add_special_tokens=False)[1] == EOS_ID


@pytest.mark.fastbpe
@pytest.mark.parametrize("backend", ["python", "fastbpe"])
def test_bpe_with_and_without_the_vocabulary(enfr_vocab_dir, fastbpe_applier, xlm_dictionary, backend):
    # "Rawalpin" is a merge result missing from the enfr vocabulary: kept (and <unk>) without it, as in XLM's
    # training data; split back into "Raw" + "alpin" with it, as in XLM's valid and test data.
    files = enfr_vocab_dir / "codes_enfr", enfr_vocab_dir / "vocab_enfr"
    training = Tokenizer.from_fastbpe(*files, languages=LANGS, bpe_backend=backend)
    evaluation = Tokenizer.from_fastbpe(*files, languages=LANGS, bpe_backend=backend, bpe_with_vocab=True)
    assert fastbpe_applier(["Rawalpinx"], False) == [["Rawalpin@@", "x"]]
    assert fastbpe_applier(["Rawalpinx"], True) == [["Raw@@", "alpin@@", "x"]]
    assert training.tokenize("Rawalpinx", "en") == ["Rawalpin", "x</w>"]
    assert training.encode("Rawalpinx", "en") == [EOS_ID, UNK_ID, xlm_dictionary["x"], EOS_ID]
    assert evaluation.tokenize("Rawalpinx", "en") == ["Raw", "alpin", "x</w>"]
    expected = [xlm_dictionary["Raw@@"], xlm_dictionary["alpin@@"], xlm_dictionary["x"]]
    assert evaluation.encode("Rawalpinx", "en", add_special_tokens=False) == expected
