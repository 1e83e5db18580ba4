"""Prepared corpora and batches (xlm/data.py): layouts written out by hand, exact resume, bad input.

Bad input (a missing or empty file, misaligned parallel files, an unknown language, another vocabulary, a
truncated or corrupt array) is a DataError in Python and one line on stderr with exit code 2 from `xlm prepare`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scaled_down

from xlm import data
from xlm.config import PRESETS
from xlm.data import (
    Corpus,
    PairBatches,
    ParallelCorpus,
    StreamBatches,
    concat_pairs,
    open_prepared,
    prepare,
    sampling_probabilities,
    vocab_hash,
)
from xlm.errors import DataError
from xlm.synthetic import save_synthetic_tokenizer
from xlm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
EOS, PAD = 1, 2

# --- Layouts, written out -----------------------------------------------------------------------------------


def test_stream_batches_lay_out_the_corpus_as_the_original_streamdataset():
    """Three sentences -> `20 21 22 </s> 23 </s> 24 25 </s>` (9 ids), 2 streams, bptt 3: 2 windows of 2x3.

    The 12 slots of 2 windows hold the 9 ids after 3 `</s>` of filling; each stream then starts with `</s>`:
        stream 0: </s> | </s> </s> </s> 20 21 22          stream 1: </s> | </s> 23 </s> 24 25 </s>
    Windows are columns 0-2 and 3-5; the last id of each stream (22, </s>) falls out, as in the original.
    """
    corpus = Corpus.from_sentences("en", [[20, 21, 22], [23], [24, 25]])
    batches = StreamBatches(corpus, lang_id=1, eos_id=EOS, batch_size=2, bptt=3, seed=0)
    assert len(batches) == 2
    windows = [batches.window(0), batches.window(1)]
    assert windows[0].input_ids.tolist() == [[1, 1, 1], [1, 1, 23]]
    assert windows[1].input_ids.tolist() == [[1, 20, 21], [1, 24, 25]]
    for window in windows:
        assert window.positions.tolist() == [[0, 1, 2], [0, 1, 2]]
        assert window.langs.tolist() == [[1, 1, 1], [1, 1, 1]]
        assert window.attention_mask.all() and window.input_ids.dtype == torch.long
    drawn = [batches.next_batch().input_ids.tolist() for _ in range(4)]  # two epochs
    assert sorted(drawn[:2]) == sorted(drawn[2:]) == sorted(w.input_ids.tolist() for w in windows)


def original_stream_windows(sent: np.ndarray, bs: int, bptt: int, eos: int) -> list[np.ndarray]:
    """facebookresearch/XLM's StreamDataset (xlm/data/dataset.py, cd281d3), transcribed: its windows in order,
    each (bs, bptt) after the transpose from the original's (slen, bs)."""
    n_tokens = len(sent)
    n_batches = math.ceil(n_tokens / (bs * bptt))
    t_size = n_batches * bptt * bs
    buffer = np.zeros(t_size, dtype=sent.dtype) + eos
    buffer[t_size - n_tokens :] = sent
    buffer = buffer.reshape((bs, n_batches * bptt)).T
    data = np.zeros((n_batches * bptt + 1, bs), dtype=sent.dtype) + eos
    data[1:] = buffer
    return [data[bptt * i : bptt * (i + 1)].T for i in range(n_batches)]


@pytest.mark.parametrize(("n", "bs", "bptt"), [(1, 1, 2), (1, 8, 32), (3, 5, 64), (7, 3, 5), (50, 4, 16), (300, 8, 32)])
def test_stream_windows_equal_the_original_streamdataset(n, bs, bptt):
    corpus = random_corpus("en", n, seed=n)
    batches = StreamBatches(corpus, lang_id=0, eos_id=EOS, batch_size=bs, bptt=bptt)
    sent = np.concatenate([np.append(corpus.sentence(i), EOS) for i in range(len(corpus))])  # the original's layout
    expected = original_stream_windows(sent, bs, bptt, EOS)
    assert len(batches) == len(expected)
    for window, want in zip(batches.eval_batches(), expected, strict=True):
        assert window.input_ids.tolist() == want.tolist()


def test_tlm_rows_restart_positions_and_switch_language_at_the_second_sentence():
    rows = concat_pairs([[20, 21], [22]], [[30, 31, 32], [33]], (0, 1), eos_id=EOS, pad_id=PAD)
    assert rows.input_ids.tolist() == [
        [1, 20, 21, 1, 1, 30, 31, 32, 1],
        [1, 22, 1, 1, 33, 1, 2, 2, 2],
    ]
    assert rows.positions.tolist() == [
        [0, 1, 2, 3, 0, 1, 2, 3, 4],
        [0, 1, 2, 0, 1, 2, 0, 0, 0],
    ]
    assert rows.langs.tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1],
    ]
    assert rows.attention_mask.long().tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0, 0, 0],
    ]


def original_concat_batches(first, second, lang1_id: int, lang2_id: int) -> tuple[torch.Tensor, ...]:
    """facebookresearch/XLM's Dataset.batch_sentences + utils.concat_batches(reset_positions=True), transcribed
    (cd281d3); returns (x, positions, langs) as (bs, slen) instead of the original's (slen, bs)."""

    def batch_sentences(sentences):
        lengths = torch.LongTensor([len(s) + 2 for s in sentences])
        sent = torch.LongTensor(lengths.max().item(), lengths.size(0)).fill_(PAD)
        sent[0] = EOS
        for i, s in enumerate(sentences):
            if lengths[i] > 2:
                sent[1 : lengths[i] - 1, i].copy_(torch.from_numpy(np.asarray(s, dtype=np.int64)))
            sent[lengths[i] - 1, i] = EOS
        return sent, lengths

    (x1, len1), (x2, len2) = batch_sentences(first), batch_sentences(second)
    lengths = len1 + len2
    slen, bs = lengths.max().item(), lengths.size(0)
    x = x1.new(slen, bs).fill_(PAD)
    x[: len1.max().item()].copy_(x1)
    positions = torch.arange(slen)[:, None].repeat(1, bs)
    langs = x1.new(slen, bs).fill_(lang1_id)
    for i in range(bs):
        l1 = len1[i]
        x[l1 : l1 + len2[i], i].copy_(x2[: len2[i], i])
        positions[l1:, i] -= len1[i]
        langs[l1:, i] = lang2_id
    return x.T, positions.T, langs.T


def test_tlm_rows_equal_the_original_concat_batches():
    rng = np.random.default_rng(0)
    first = [rng.integers(14, 500, rng.integers(1, 15)) for _ in range(9)]
    second = [rng.integers(14, 500, rng.integers(1, 15)) for _ in range(9)]
    rows = concat_pairs(first, second, (3, 7), eos_id=EOS, pad_id=PAD)
    x, positions, langs = original_concat_batches(first, second, 3, 7)
    real = rows.attention_mask
    assert torch.equal(rows.input_ids, x) and torch.equal(rows.langs, langs)
    assert torch.equal(rows.positions[real], positions[real])  # padding: position 0 here, counting on there
    assert torch.equal(real, x != PAD)


def pairs_corpus() -> ParallelCorpus:
    first = Corpus.from_sentences("en", [[20, 21], [22], [], [23, 24, 25, 26], [27]])
    second = Corpus.from_sentences("fr", [[30, 31, 32], [33], [34], [35], [36, 37, 38, 39, 40, 41]])
    return ParallelCorpus(("en", "fr"), first, second)


def test_pair_batches_leave_out_empty_and_long_pairs_and_visit_the_rest_once_per_epoch():
    batches = PairBatches(pairs_corpus(), lang_ids=(0, 1), eos_id=EOS, pad_id=PAD, batch_size=2, max_len=5, seed=3)
    assert batches.pairs.tolist() == [0, 1, 3]  # pair 2 has an empty side, pair 4 a side of 6 > max_len ids
    eval_rows = [row for b in batches.eval_batches() for row in b.input_ids.tolist()]
    assert eval_rows[0] == [1, 20, 21, 1, 1, 30, 31, 32, 1] and eval_rows[1][:6] == [1, 22, 1, 1, 33, 1]
    for _ in range(3):  # three epochs: each pair exactly once in each
        epoch = [row for _ in range(len(batches)) for row in batches.next_batch().input_ids.tolist()]
        firsts = sorted(tuple(row[1 : row.index(EOS, 1)]) for row in epoch)
        assert firsts == [(20, 21), (22,), (23, 24, 25, 26)]


def test_tlm_direction_follows_the_corpus_order():
    reverse = pairs_corpus().reversed()
    assert reverse.langs == ("fr", "en")
    row = PairBatches(reverse, lang_ids=(1, 0), eos_id=EOS, pad_id=PAD, batch_size=1).batch([0])
    assert row.input_ids.tolist() == [[1, 30, 31, 32, 1, 1, 20, 21, 1]]
    assert row.langs.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0, 0]]


def test_tokens_per_batch_bounds_the_tokens_of_a_batch():
    rng = np.random.default_rng(0)
    sides = [
        Corpus.from_sentences(lang, [rng.integers(14, 99, rng.integers(1, 20)) for _ in range(200)]) for lang in "ab"
    ]
    corpus = ParallelCorpus(("a", "b"), *sides)
    batches = PairBatches(corpus, lang_ids=(0, 1), eos_id=EOS, pad_id=PAD, tokens_per_batch=200, max_len=100)
    tokens = [int(batches.next_batch().attention_mask.sum()) for _ in range(len(batches))]
    assert sum(tokens) == int(batches.row_lengths[batches.pairs].sum())  # every pair once
    assert max(tokens) < 200 + 44  # a batch ends at the pair that crosses a multiple of 200 (rows <= 44)


# --- Determinism and resume ---------------------------------------------------------------------------------


def random_corpus(lang: str, n: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    return Corpus.from_sentences(lang, [rng.integers(14, 500, rng.integers(0, 30)) for _ in range(n)])


def make_stream(seed: int = 0) -> StreamBatches:
    return StreamBatches(random_corpus("en", 300, 1), lang_id=0, eos_id=EOS, batch_size=4, bptt=16, seed=seed)


def make_pairs(seed: int = 0) -> PairBatches:
    corpus = ParallelCorpus(("en", "fr"), random_corpus("en", 200, 2), random_corpus("fr", 200, 3))
    return PairBatches(corpus, lang_ids=(0, 1), eos_id=EOS, pad_id=PAD, batch_size=8, seed=seed)


@pytest.mark.parametrize("make", [make_stream, make_pairs], ids=["stream", "pairs"])
def test_a_resumed_batcher_continues_exactly(make):
    straight = make()
    n = 2 * len(straight) + 3  # across two epoch boundaries
    expected = [straight.next_batch() for _ in range(n)]
    first_half = make()
    for _ in range(n // 2):
        first_half.next_batch()
    resumed = make(seed=99)  # the state carries the seed
    resumed.load_state_dict(json.loads(json.dumps(first_half.state_dict())))  # as a checkpoint would keep it
    for want in expected[n // 2 :]:
        got = resumed.next_batch()
        assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("input_ids", "langs", "positions"))
    other_seed = make(seed=1)
    assert any(not torch.equal(other_seed.next_batch().input_ids, want.input_ids) for want in expected[:3])


def test_a_saved_position_for_another_corpus_is_refused():
    with pytest.raises(DataError, match="another corpus or batch shape"):
        make_stream().load_state_dict(
            StreamBatches(random_corpus("en", 30, 1), lang_id=0, eos_id=EOS, batch_size=4, bptt=16).state_dict()
        )
    with pytest.raises(DataError, match="not for stream batches"):
        make_stream().load_state_dict(make_pairs().state_dict())


def test_rows_split_a_global_batch():
    batch = make_pairs().next_batch()
    parts = [batch.rows(0, 3), batch.rows(3, 5), batch.rows(5, len(batch))]
    for name in ("input_ids", "langs", "positions", "attention_mask"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(batch, name))


def test_language_sampling_as_in_the_paper():
    counts = {"en": 900, "fr": 100}
    q = sampling_probabilities(counts, 0.5)  # p = 0.9, 0.1 -> sqrt: 0.9487, 0.3162 -> normalised
    assert q["en"] == pytest.approx(0.75) and q["fr"] == pytest.approx(0.25)
    assert sampling_probabilities(counts, 0) == {"en": 0.5, "fr": 0.5}
    assert sampling_probabilities(counts, 1) == pytest.approx({"en": 0.9, "fr": 0.1})
    with pytest.raises(DataError):
        sampling_probabilities(counts, -1)


# --- prepare and open_prepared ------------------------------------------------------------------------------

EN = ["The cat is black.", "Hello, world!", "", "Wikipedia was used to train XLM.", "A <special1> test </s>."]
FR = ["Le chat est noir.", "Bonjour le monde !", "Vide à gauche.", "XLM a appris sur Wikipédia.", "Un test."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The synthetic character-level tokenizer (en=0, fr=1), cased: no lowercasing in the original preset."""
    directory = tmp_path_factory.mktemp("tokenizer")
    save_synthetic_tokenizer(scaled_down(PRESETS["xlm-clm-enfr-1024"]), directory, lowercase=False)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tokenizer_dir, preset="original")


@pytest.fixture
def texts(tmp_path: Path) -> dict[str, Path]:
    paths = {"en": tmp_path / "train.en", "fr": tmp_path / "train.fr"}
    paths["en"].write_text("\n".join(EN) + "\n", encoding="utf-8")
    paths["fr"].write_text("\n".join(FR), encoding="utf-8")  # no final newline: still 5 lines
    return paths


def test_prepared_ids_are_the_tokenizers_without_framing_or_special_tokens(tmp_path, tokenizer, texts):
    out = prepare(
        tmp_path / "data", tokenizer, mono={"en": texts["en"]}, para={("en", "fr"): (texts["en"], texts["fr"])}
    )
    prepared = open_prepared(out, "train", vocab_hash(tokenizer))
    corpus = prepared.mono["en"]
    assert len(corpus) == 5 and corpus.ids.dtype == np.uint16  # 512 pieces
    for i, line in enumerate(EN[:4]):
        assert corpus.sentence(i).tolist() == tokenizer.encode(line, "en", add_special_tokens=False)
    assert corpus.sentence(2).tolist() == []  # a blank line stays, as an empty sentence (line i = sentence i)
    assert corpus.sentence(4).tolist() == tokenizer.encode("A test.", "en", add_special_tokens=False)
    pair = prepared.para[("en", "fr")]
    assert pair.langs == ("en", "fr") and len(pair) == 5
    assert pair.second.sentence(4).tolist() == tokenizer.encode(FR[4], "fr", add_special_tokens=False)
    header = json.loads((out / "train" / "header.json").read_text())
    assert header["mono"]["en"]["dropped_special_tokens"] == 2  # <special1> and </s> in the last line
    assert header["vocab_hash"] == vocab_hash(tokenizer) and header["dtype"] == "uint16"
    counts = prepared.token_counts()
    assert counts.shape == (512,) and counts.sum() == 2 * corpus.n_tokens + pair.second.n_tokens


def test_several_processes_and_blocks_give_the_same_corpus(tmp_path, tokenizer, monkeypatch):
    lines = [f"Sentence number {i} of the corpus, été {i * 7}." for i in range(2500)]
    path = tmp_path / "big.fr"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    one = open_prepared(prepare(tmp_path / "one", tokenizer, mono={"fr": path}), "train", None).mono["fr"]
    monkeypatch.setattr(data, "BLOCK_LINES", 1100)  # three blocks, each of two chunks for the workers
    two = open_prepared(prepare(tmp_path / "two", tokenizer, mono={"fr": path}, workers=2), "train", None).mono["fr"]
    assert np.array_equal(one.ids, two.ids) and np.array_equal(one.offsets, two.offsets)
    assert one.sentence(1234).tolist() == tokenizer.encode(lines[1234], "fr", add_special_tokens=False)


def test_splits_are_separate_directories_with_one_vocabulary(tmp_path, tokenizer, texts):
    prepare(tmp_path / "data", tokenizer, mono={"en": texts["en"]})
    prepare(tmp_path / "data", tokenizer, mono={"en": texts["en"]}, split="valid")
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"train", "valid"}
    with pytest.raises(DataError, match="already exists"):
        prepare(tmp_path / "data", tokenizer, mono={"fr": texts["fr"]})
    prepare(tmp_path / "data", tokenizer, mono={"fr": texts["fr"]}, force=True)
    assert set(open_prepared(tmp_path / "data", "train", vocab_hash(tokenizer)).mono) == {"fr"}


# --- Bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def swapped_tokenizer_dir(tmp_path, tokenizer_dir) -> Path:
    """The same tokenizer files with two pieces' ids swapped: another vocabulary."""
    directory = tmp_path / "other-tokenizer"
    directory.mkdir()
    for name in ("merges.txt", "tokenizer_config.json"):
        (directory / name).write_bytes((tokenizer_dir / name).read_bytes())
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (directory / "vocab.json").write_text(json.dumps(vocab))
    return directory


BAD_PREPARE = {
    "missing file": (lambda t: {"mono": {"en": t["en"].with_name("nope.en")}}, "cannot read"),
    "empty file": (lambda t: {"mono": {"en": t["empty"]}}, "is empty"),
    "blank lines only": (lambda t: {"mono": {"en": t["blank"]}}, "empty corpus"),
    "misaligned pair": (lambda t: {"para": {("en", "fr"): (t["en"], t["short"])}}, "5 lines but .* has 2"),
    "unknown language": (lambda t: {"mono": {"de": t["en"]}}, "unknown language 'de'"),
    "same language twice": (lambda t: {"para": {("en", "en"): (t["en"], t["en"])}}, "two different languages"),
    "not utf-8": (lambda t: {"mono": {"en": t["latin1"]}}, "not UTF-8"),
}


@pytest.fixture
def bad_texts(texts, tmp_path) -> dict[str, Path]:
    paths = dict(texts)
    for name, content in {
        "empty": b"",
        "blank": b"\n\n  \n",
        "short": b"un\ndeux\n",
        "latin1": "été\n".encode("latin-1"),
    }.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_bytes(content)
    return paths


@pytest.mark.parametrize("case", list(BAD_PREPARE))
def test_bad_input_to_prepare_is_a_data_error(case, tmp_path, tokenizer, bad_texts):
    sources, message = BAD_PREPARE[case]
    with pytest.raises(DataError, match=message):
        prepare(tmp_path / "data", tokenizer, **sources(bad_texts))
    assert not (tmp_path / "data" / "train").exists()  # nothing half-written


def test_another_vocabulary_is_refused(tmp_path, tokenizer, texts, swapped_tokenizer_dir):
    prepare(tmp_path / "data", tokenizer, mono={"en": texts["en"]})
    other = Tokenizer.from_pretrained(swapped_tokenizer_dir, preset="original")
    assert vocab_hash(other) != vocab_hash(tokenizer)
    with pytest.raises(DataError, match="another vocabulary"):
        open_prepared(tmp_path / "data", "train", vocab_hash(other))
    with pytest.raises(DataError, match="another vocabulary"):  # a second split must use the first one's
        prepare(tmp_path / "data", other, mono={"en": texts["en"]}, split="valid")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _truncate(d / "en.ids"), "truncated or corrupt"),
        (lambda d: (d / "en.offsets").unlink(), "missing"),
        (lambda d: _overwrite(d / "en.offsets", np.array([0, 9, 3], dtype=np.int64)), "offsets is corrupt"),
        (lambda d: _overwrite(d / "en.ids", np.array([60000], dtype=np.uint16)), "outside the vocabulary"),
        (lambda d: (d / "header.json").write_text("{not json"), "cannot be read"),
        (lambda d: (d / "header.json").unlink(), "not a prepared split"),
    ],
    ids=["truncated ids", "missing offsets", "offsets out of order", "id out of range", "bad header", "no header"],
)
def test_a_damaged_corpus_is_refused(damage, message, tmp_path, tokenizer, texts):
    prepare(tmp_path / "data", tokenizer, mono={"en": texts["en"]})
    damage(tmp_path / "data" / "train")
    with pytest.raises(DataError, match=message):
        open_prepared(tmp_path / "data", "train", vocab_hash(tokenizer))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 2)


def _overwrite(path: Path, values: np.ndarray) -> None:
    with open(path, "r+b") as f:
        f.write(values.tobytes())


# --- The command --------------------------------------------------------------------------------------------


def xlm_prepare(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "xlm", "prepare", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_xlm_prepare_writes_a_split(tmp_path, tokenizer_dir, tokenizer, texts):
    done = xlm_prepare("--tokenizer", tokenizer_dir, "--out", tmp_path / "data", "--mono", "en", texts["en"],
                       "--para", "en", "fr", texts["en"], texts["fr"], "--workers", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train.en: 5 sentences" in done.stdout and "train.en-fr.fr: 5 sentences" in done.stdout
    checked = xlm_prepare("--out", tmp_path / "data", "--check")  # no tokenizer: no vocabulary check
    assert checked.returncode == 0 and checked.stdout.replace("checked", "wrote") == done.stdout, checked.stderr
    prepared = open_prepared(tmp_path / "data", "train", vocab_hash(tokenizer))
    assert prepared.mono["en"].sentence(0).tolist() == tokenizer.encode(EN[0], "en", add_special_tokens=False)


CLI_CASES = {
    "missing file": (["--mono", "en", "{tmp}/nope.en"], "cannot read"),
    "empty file": (["--mono", "en", "{empty}"], "is empty"),
    "misaligned pair": (["--para", "en", "fr", "{en}", "{short}"], "line-aligned"),
    "unknown language": (["--mono", "de", "{en}"], "unknown language 'de'"),
    "another vocabulary": (
        ["--split", "valid", "--tokenizer", "{other}", "--mono", "en", "{en}"],
        "another vocabulary",
    ),
    "existing split": (["--mono", "en", "{en}"], "already exists"),
    "missing tokenizer": (["--tokenizer", "{tmp}/no-tokenizer", "--mono", "en", "{en}"], "no-tokenizer"),
    "bad option": (["--mono", "en"], "expected 2 arguments"),
    "truncated array": (["--check", "--truncate"], "truncated or corrupt"),
    "check, another vocabulary": (["--check", "--tokenizer", "{other}"], "another vocabulary"),
    "check, no split": (["--check", "--split", "test"], "not a prepared split"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_xlm_prepare_bad_input_is_one_line_and_exit_2(
    case, tmp_path, tokenizer, tokenizer_dir, bad_texts, swapped_tokenizer_dir
):
    prepare(tmp_path / "data", tokenizer, mono={"en": bad_texts["en"]})  # an existing train split
    args, message = CLI_CASES[case]
    names = {**{k: str(v) for k, v in bad_texts.items()}, "tmp": str(tmp_path), "other": str(swapped_tokenizer_dir)}
    args = [a.format(**names) for a in args]
    if "--truncate" in args:
        args.remove("--truncate")
        _truncate(tmp_path / "data" / "train" / "en.offsets")
    if "--tokenizer" not in args:
        args = ["--tokenizer", str(tokenizer_dir), *args]
    done = xlm_prepare("--out", tmp_path / "data", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xlm prepare: error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert done.stdout == ""


def test_the_tlm_row_of_docs_training_md_on_the_real_vocabulary(enfr_tokenizer_dir):
    """The picture in docs/training.md: ids, positions and languages of an en-fr row (padding aside)."""
    tokenizer = Tokenizer.from_pretrained(enfr_tokenizer_dir, preset="original")
    en = tokenizer.encode("The cat is black.", "en", add_special_tokens=False)
    fr = tokenizer.encode("Le chat est noir.", "fr", add_special_tokens=False)
    row = concat_pairs([en], [fr], (0, 1), eos_id=EOS, pad_id=PAD)
    assert row.input_ids.tolist() == [[1, 30, 6127, 29, 985, 15, 1, 1, 112, 5890, 61, 6342, 15, 1]]
    assert row.positions.tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6]]
    assert row.langs.tolist() == [[0] * 7 + [1] * 7]
    doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "ids        1    30  6127       29 985   15 1    1    112 5890       61  6342 15 1    2" in doc
