"""`torchrun --nproc-per-node 2 -m xlm score --file`: exactly the single-process per-line scores, in input order.

Both runs are subprocesses with one thread per process (torchrun's default): PyTorch's fused attention kernel
picks its blocking from the thread count, which moves the last bits of a score (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import scaled_down

from xlm.config import PRESETS
from xlm.synthetic import save_synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat is black and a dog runs over green fields while Wikipedia was used to train it , they say".split()


def run(args: list[str], launcher: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "xlm", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distributed")
    checkpoint = save_synthetic_checkpoint(scaled_down(PRESETS["xlm-clm-enfr-1024"]), root / "xlm-clm-enfr-1024")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(61)]
    lines.insert(7, "")  # blank lines are skipped, here as in a single process
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return checkpoint, root / "corpus.txt"


def test_torchrun_scoring_equals_one_process_exactly(corpus):
    checkpoint, text = corpus
    args = ["score", "--model", str(checkpoint), "--file", str(text), "--batch-tokens", "400", "--json"]
    single = run(args, [])
    two = run(args, ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    assert single["sentences"] == 61 and len(single["sentence_logprobs"]) == len(single["sentence_tokens"]) == 61
    assert sum(single["sentence_tokens"]) == single["tokens"]
    assert two == single  # every per-line log-prob and token count, in input order, and the totals: bit for bit
