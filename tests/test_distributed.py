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


# --- How a torchrun process ends ------------------------------------------------------------------------------


def test_end_process_flushes_and_skips_the_interpreters_shutdown():
    """What is printed comes out, the status is the one given, and no shutdown work runs (an atexit handler stands
    for it: the interpreter's shutdown is where gloo's threads abort a process)."""
    code = (
        "import atexit, sys\n"
        "from xlm.distributed import end_process\n"
        "atexit.register(lambda: print('shutdown ran'))\n"
        "print('to stdout', end='')\n"
        "print('to stderr', end='', file=sys.stderr)\n"
        "end_process(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (3, "to stdout", "to stderr")


@pytest.mark.parametrize("world", [None, "1", "2"])
def test_the_xlm_command_ends_through_end_process_under_torchrun_only(monkeypatch, world):
    from xlm import cli, distributed

    class Ended(Exception):
        pass

    def end_process(code: int) -> None:
        raise Ended(code)

    monkeypatch.setattr(cli, "main", lambda: 5)
    monkeypatch.setattr(distributed, "end_process", end_process)
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(Ended if world == "2" else SystemExit) as ended:
        cli.command()
    assert ended.value.args == (5,)
