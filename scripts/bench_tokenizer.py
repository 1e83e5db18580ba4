#!/usr/bin/env python
"""Tokenizer speed: xlm's `Tokenizer` against transformers' `XLMTokenizer` on the same real sentences.

    python scripts/bench_tokenizer.py                      # 10,000 lines, 1 and 2 worker processes
    python scripts/bench_tokenizer.py --lines 2000 --workers 1 2 4
    python scripts/bench_tokenizer.py --original --workers 1   # also the original preset (XLM's training data)

Sentences come from Debian's French gettext catalogs (`/usr/share/locale/fr/LC_MESSAGES/*.mo`): the msgids
are English, the msgstrs French, each encoded with its own language's Moses rules. Both tokenizers do the
same work per sentence: transformers' `_tokenize(text, lang=...)` + special tokens
(`transformers_reference_ids`), ours `encode(text, lang)`; the ids are checked equal. With `--original`, a row
also times the original preset (Moses as the 2018 Perl scripts, no lowercasing), whose ids differ from
transformers' by design: they are checked equal across its runs. Every measurement
starts from a fresh tokenizer, so the BPE word caches start cold. The vocabulary is the real English-French
one, converted from the original fastBPE files (env XLM_ENFR_VOCAB, default ../shared/xlm-enfr-vocab).

`bench_tokenizer()` returns the figures for scripts/bench.py. `gettext_corpus()` and
`make_enfr_tokenizer_dir()` also build the tests' corpus and vocabulary (tests/conftest.py): the benchmark
times the text that the tests check.
"""

from __future__ import annotations

import argparse
import gettext
import json
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from xlm.gettext_corpus import LOCALE_DIR, default_enfr_vocab_dir
from xlm.parity import transformers_reference_ids
from xlm.tokenizer import Tokenizer, convert_fastbpe_vocab

# tokenizer_config.json of xlm-clm-enfr-1024 on the hub.
ENFR_CONFIG = {
    "do_lowercase_and_remove_accent": True,
    "id2lang": {"0": "en", "1": "fr"},
    "lang2id": {"en": 0, "fr": 1},
}


def gettext_corpus(locale_dir: Path = LOCALE_DIR, min_words: int = 3) -> dict[str, list[str]]:
    """{"en": lines, "fr": lines} from every `.mo` catalog in locale_dir: msgid is English, msgstr French.

    Plural forms, the metadata entry (empty msgid) and untranslated entries are skipped; a message context
    (`ctx\\x04msgid`) is dropped. Messages are split into lines; lines with at least `min_words` words are
    kept once each, in catalog order (sorted file names), so the corpus is the same on every run.
    """
    lines: dict[str, dict[str, None]] = {"en": {}, "fr": {}}
    for path in sorted(locale_dir.glob("*.mo")):
        with path.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # the stdlib exposes no public iterator
        for msgid, msgstr in catalog.items():
            if not isinstance(msgid, str) or not msgid or not msgstr:
                continue  # plural forms have (msgid, n) keys; "" is the metadata entry
            for lang, message in (("en", msgid.rpartition("\x04")[2]), ("fr", msgstr)):
                for line in message.split("\n"):
                    if len(line.split()) >= min_words:
                        lines[lang][line] = None
    return {lang: list(kept) for lang, kept in lines.items()}


def sample_lines(corpus: dict[str, list[str]], n_lines: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n_lines (text, lang) pairs drawn without replacement from both languages: (texts, langs)."""
    pairs = [(line, lang) for lang, lines in corpus.items() for line in lines]
    chosen = random.Random(seed).sample(pairs, min(n_lines, len(pairs)))
    return [text for text, _ in chosen], [lang for _, lang in chosen]


def make_enfr_tokenizer_dir(vocab_dir: Path, out_dir: Path) -> Path:
    """The hub's tokenizer files of xlm-clm-enfr-1024, rebuilt from the original fastBPE pair."""
    convert_fastbpe_vocab(vocab_dir / "codes_enfr", vocab_dir / "vocab_enfr", out_dir)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(ENFR_CONFIG, indent=2) + "\n", encoding="utf-8")
    return out_dir


# ---- transformers' reference ids -----------------------------------------------------------------------


def transformers_encode_lines(hf, texts: list[str], langs: list[str], workers: int = 1) -> list[list[int]]:
    """`transformers_reference_ids` of every text; `workers` processes take 1,000 lines at a time, as ours."""
    if workers == 1:
        return [transformers_reference_ids(hf, text, lang) for text, lang in zip(texts, langs, strict=True)]
    chunks = [(texts[i : i + 1000], langs[i : i + 1000]) for i in range(0, len(texts), 1000)]
    with multiprocessing.get_context().Pool(workers, _start_transformers_worker, (hf,)) as pool:
        return [ids for part in pool.map(_transformers_chunk, chunks) for ids in part]


_worker_hf = None  # transformers' tokenizer inside a worker process


def _start_transformers_worker(hf) -> None:
    global _worker_hf
    _worker_hf = hf


def _transformers_chunk(chunk: tuple[list[str], list[str]]) -> list[list[int]]:
    return transformers_encode_lines(_worker_hf, *chunk)


def _cpu_seconds() -> float:
    """CPU time of this process plus that of its finished child processes (the workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# ---- the benchmark -------------------------------------------------------------------------------------


def bench_tokenizer(
    vocab_dir: str | Path | None = None,
    n_lines: int = 10_000,
    workers: tuple[int, ...] = (1, 2),
    backends: tuple[str, ...] = ("python",),
    repeats: int = 3,
    original: bool = False,
) -> dict:
    """Sentences per second of ours and of transformers' on the same n_lines, for each worker count.

    Returns {"lines": n, "results": [row, ...]}, a row holding "tokenizer", "workers", "load_s", "encode_s",
    "cpu_s", "sentences_per_s" (wall clock) and "sentences_per_cpu_s" (CPU time of this process and its
    workers, which other jobs on the machine barely change). Every run loads a fresh tokenizer (load_s, not
    counted in the speeds), so every BPE cache starts cold; encode_s includes starting the worker processes.
    Each figure is the best of `repeats` runs, which take turns. Raises AssertionError if any ids differ.
    original: also a row for the original preset (python BPE), checked against its own first run.
    """
    from transformers import XLMTokenizer

    vocab_dir = Path(vocab_dir) if vocab_dir is not None else default_enfr_vocab_dir()
    texts, langs = sample_lines(gettext_corpus(), n_lines)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = make_enfr_tokenizer_dir(vocab_dir, Path(scratch))
        # name -> (load, encode(tokenizer, n_workers))
        contenders = {
            "transformers": (
                lambda: XLMTokenizer.from_pretrained(tokenizer_dir),
                lambda hf, n: transformers_encode_lines(hf, texts, langs, n),
            )
        }
        for backend in backends:
            contenders[f"xlm ({backend} BPE)"] = (
                lambda b=backend: Tokenizer.from_pretrained(tokenizer_dir, bpe_backend=b),
                lambda ours, n: ours.encode_lines(texts, langs, workers=n),
            )
        if original:
            contenders["xlm original preset"] = (
                lambda: Tokenizer.from_pretrained(tokenizer_dir, preset="original"),
                lambda ours, n: ours.encode_lines(texts, langs, workers=n),
            )
        # Round robin: each repeat times every row once, so that a busy spell on the machine hits all rows.
        rows = [(name, n_workers) for n_workers in workers for name in contenders]
        runs: dict[tuple[str, int], list[dict[str, float]]] = {row: [] for row in rows}
        references: dict[str, list[list[int]]] = {}  # transformers' ids (its first run), the original preset's
        for _ in range(repeats):
            for name, n_workers in rows:
                load, encode = contenders[name]
                start = time.perf_counter()
                tokenizer = load()
                loaded, cpu_loaded = time.perf_counter(), _cpu_seconds()
                ids = encode(tokenizer, n_workers)
                encode_s, cpu_s = time.perf_counter() - loaded, _cpu_seconds() - cpu_loaded
                runs[name, n_workers].append({"load_s": loaded - start, "encode_s": encode_s, "cpu_s": cpu_s})
                family = "original" if "original" in name else "transformers"
                reference = references.setdefault(family, ids)
                assert ids == reference, f"{name} with {n_workers} workers gives other ids than its first run"
        for name, n_workers in rows:
            best = {key: min(run[key] for run in runs[name, n_workers]) for key in ("load_s", "encode_s", "cpu_s")}
            speeds = {
                "sentences_per_s": len(texts) / best["encode_s"],
                "sentences_per_cpu_s": len(texts) / best["cpu_s"],
            }
            results.append({"tokenizer": name, "workers": n_workers, **best, **speeds})
    return {"lines": len(texts), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-dir", type=Path, default=None, help="codes_enfr + vocab_enfr (XLM_ENFR_VOCAB)")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fastbpe", action="store_true", help="also time the fastBPE backend")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the best figures are shown")
    parser.add_argument("--original", action="store_true", help="also time the original preset")
    args = parser.parse_args(argv)
    backends = ("python", "fastbpe") if args.fastbpe else ("python",)
    report = bench_tokenizer(args.vocab_dir, args.lines, tuple(args.workers), backends, args.repeats, args.original)
    lines, cpus = report["lines"], os.cpu_count()
    print(f"{lines:,} sentences (en + fr gettext catalogs), {cpus} CPUs, best of {args.repeats} runs\n")
    print(f"| {'tokenizer':<22} | workers | load s | encode s | sentences/s | CPU s | sentences/CPU s |")
    print(f"|{'-' * 24}|--------:|-------:|---------:|------------:|------:|----------------:|")
    for row in report["results"]:
        wall = f"{row['load_s']:>6.2f} | {row['encode_s']:>8.2f} | {row['sentences_per_s']:>11,.0f}"
        cpu = f"{row['cpu_s']:>5.2f} | {row['sentences_per_cpu_s']:>15,.0f}"
        print(f"| {row['tokenizer']:<22} | {row['workers']:>7} | {wall} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
