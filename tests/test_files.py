"""What xlm promises about the directories it writes (xlm/files.py), one section per promise.

1. Whole or absent: an output appears complete under its name, or not at all (Ctrl-C included).
2. Inputs untouched: `--force` never removes an input, the working directory, nor anything but the output.
3. One writer per output: a second writer gets a one-line error; the first finishes, its work folder untouched.
4. A killed writer's leftovers are removed by the next writer, which holds the lock, so no live writer owns them.
5. Every write failure is one line, exit code 2.

Writers run as subprocesses (`xlm convert`), paused mid-write where a test needs them to be: they hold real
locks, get real signals, and die for real. Tests run as root, which ignores file permissions; where a test needs
a permission to be refused, it drops root's override capabilities (`setpriv`) for that one subprocess.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import unprivileged_prefix
from test_convert import CODES, save_original

import xlm.convert
from xlm.checkpoint import load_pretrained
from xlm.download import download
from xlm.errors import CheckpointError
from xlm.files import atomic_directory, write_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# `xlm convert ARGS` whose safetensors write, once done, writes its pid to READY and waits until GO exists.
PAUSED_CONVERT = """
import os, pathlib, sys, time
import xlm.cli, xlm.convert
ready, go = map(pathlib.Path, sys.argv[1:3])
write = xlm.convert.write_safetensors
def paused_write(tensors, path):
    write(tensors, path)
    ready.write_text(str(os.getpid()))
    while not go.exists():
        time.sleep(0.02)
xlm.convert.write_safetensors = paused_write
sys.exit(xlm.cli.main(["convert", *sys.argv[3:]]))
"""


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    """An original checkpoint and its codes in tmp_path/data: the inputs that must survive every test."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "codes_enfr").write_bytes(CODES)
    save_original(data / "clm_enfr.pth")
    return data / "clm_enfr.pth", data / "codes_enfr"


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256): what a test expects to find unchanged."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def convert(inputs, out, *extra: str, cwd: Path = ROOT, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    checkpoint, codes = inputs
    command = [*prefix, sys.executable, "-m", "xlm", "convert", str(checkpoint), "--codes", str(codes)]
    return subprocess.run(
        [*command, "--out", str(out), *extra], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120
    )


def start_paused_convert(inputs, out, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A converter paused after writing model.safetensors into its work folder; returns it and its GO file."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    checkpoint, codes = inputs
    args = [str(ready), str(go), str(checkpoint), "--codes", str(codes), "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CONVERT, *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the converter never reached its pause"
        time.sleep(0.02)
    return process, go


def assert_one_line_error(result, message: str, code: int = 2) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("xlm convert: "), result.stderr
    assert message in result.stderr, result.stderr


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- 1. Whole or absent -------------------------------------------------------------------------------------


def test_a_block_that_fails_leaves_nothing_and_one_that_succeeds_leaves_everything(tmp_path):
    final = tmp_path / "checkpoint"
    with pytest.raises(RuntimeError), atomic_directory(final) as work:
        write_json(work / "config.json", {"step": 1})
        raise RuntimeError("the trainer crashed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as work:
        write_json(work / "config.json", {"step": 2})
        assert not final.exists()  # nothing under the final name until the block ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    with pytest.raises(RuntimeError), atomic_directory(final, replace=True) as work:
        write_json(work / "config.json", {"step": 3})
        raise RuntimeError("the trainer crashed again")
    assert (final / "config.json").read_text() == '{\n  "step": 2\n}\n'  # the previous one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_ctrl_c_during_convert_is_one_line_exit_130_and_leaves_nothing(tmp_path, inputs):
    """130 = 128 + SIGINT, what a shell reports for an interrupted process: callers can tell it from bad input."""
    before = fingerprint(tmp_path / "data")
    out = tmp_path / "converted"
    process, _ = start_paused_convert(inputs, out, tmp_path)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_one_line_error(result, "xlm convert: interrupted; nothing was left half-written", code=130)
    assert not out.exists() and leftovers(tmp_path) == []  # no work folder, no lock file
    assert fingerprint(tmp_path / "data") == before


# --- 2. Inputs untouched: --force removes the output and nothing else -----------------------------------------


@pytest.mark.parametrize(
    ("out", "cwd", "message"),
    [
        ("data", "tmp", "it holds the input"),  # the folder of the inputs
        (".", "data", "it is the working directory or holds it"),
        ("$PWD", "data", "it is the working directory or holds it"),
        ("..", "data", "it is the working directory or holds it"),
        ("tmp", "root", "it holds the input"),  # a parent of the inputs' folder
    ],
)
def test_force_refuses_an_output_that_holds_an_input_or_the_working_directory(tmp_path, inputs, out, cwd, message):
    places = {"tmp": tmp_path, "data": tmp_path / "data", "root": ROOT}
    before = fingerprint(tmp_path)
    out = str(places[cwd]) if out == "$PWD" else str(places.get(out, out))
    result = convert(inputs, out, "--force", cwd=places[cwd])
    assert_one_line_error(result, message)
    assert fingerprint(tmp_path) == before


def test_force_refuses_an_output_holding_a_link_to_the_input(tmp_path, inputs):
    """The input named through a symbolic link inside the output: the link would go with the output."""
    checkpoint, codes = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "ckpt.pth").symlink_to(checkpoint)
    before = fingerprint(tmp_path)
    assert_one_line_error(convert((out / "ckpt.pth", codes), out, "--force"), "it holds the input")
    assert fingerprint(tmp_path) == before and (out / "ckpt.pth").is_symlink()


def test_force_refuses_a_directory_that_is_not_a_checkpoint(tmp_path, inputs):
    """`--out ~ --force` must not wipe a home directory: only an empty folder or one with config.json goes."""
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "chapter1.tex").write_text("\\chapter{XLM}")
    before = fingerprint(tmp_path)
    assert_one_line_error(convert(inputs, home, "--force"), "holds no config.json: not a checkpoint directory")
    assert fingerprint(tmp_path) == before


def test_force_replaces_a_previous_output_and_only_it(tmp_path, inputs):
    out = tmp_path / "converted"
    assert convert(inputs, out).returncode == 0
    (out / "stale.txt").write_text("from an older conversion")
    before = fingerprint(tmp_path / "data")
    result = convert(inputs, out, "--force")
    assert result.returncode == 0, result.stderr
    assert not (out / "stale.txt").exists() and load_pretrained(out).config.objective == "clm"
    assert fingerprint(tmp_path / "data") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "data"]


def test_download_refuses_an_output_that_holds_the_hub_cache(tmp_path, no_network):
    weights = tmp_path / "weights"
    cache = weights / "xlm-clm-enfr-1024" / "hub"
    cache.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="it holds the input"):
        download("xlm-clm-enfr-1024", weights, cache_dir=cache, local_files_only=True, force=True, progress=False)
    assert cache.is_dir()


# --- 3. One writer per output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_second_writer_gets_one_line_and_the_first_one_finishes(tmp_path, inputs, force):
    out = tmp_path / "converted"
    first, go = start_paused_convert(inputs, out, tmp_path)
    try:
        [work] = [p for p in tmp_path.iterdir() if p.name.startswith(".converted.partial-")]
        second = convert(inputs, out, *(["--force"] if force else []))
        assert_one_line_error(second, f"another process (pid {first.pid}) is writing {out}")
        assert work.is_dir() and (work / "model.safetensors").is_file()  # the first one's work, untouched
    finally:
        go.touch()
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0 and stderr == "" and stdout.startswith(f"{out}: 2 layers"), stderr
    assert load_pretrained(out).config.objective == "clm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "data", "go", "ready"]  # no lock, no work


# --- 4. A killed writer's leftovers ----------------------------------------------------------------------------


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer(tmp_path, inputs):
    out = tmp_path / "converted"
    first, _ = start_paused_convert(inputs, out, tmp_path)
    first.kill()  # SIGKILL: no clean-up runs
    first.communicate(timeout=60)
    left = leftovers(tmp_path)
    assert not out.exists() and ".converted.lock" in left and any(".converted.partial-" in name for name in left)
    result = convert(inputs, out)
    assert result.returncode == 0, result.stderr
    assert leftovers(tmp_path) == [] and load_pretrained(out).config.objective == "clm"


def test_an_output_killed_while_being_replaced_is_put_back(tmp_path, inputs):
    """Killed between moving the old output aside and renaming the new one in: the old one is restored."""
    checkpoint, codes = inputs
    out = tmp_path / "converted"
    xlm.convert.convert_original(checkpoint, codes, out)
    before = fingerprint(out)
    out.rename(tmp_path / ".converted.old-0123456789ab")
    (tmp_path / ".converted.partial-0123456789ab").mkdir()  # the new one, incomplete as far as anyone knows
    assert_one_line_error(convert(inputs, out), "already exists; pass --force to replace it")
    assert fingerprint(out) == before and leftovers(tmp_path) == []


# --- 5. Every write failure is one line -------------------------------------------------------------------------


def test_an_output_under_a_file_is_one_line(tmp_path, inputs):
    assert_one_line_error(convert(inputs, inputs[1] / "out"), "cannot write")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="no /sys here")
def test_an_output_on_a_mount_that_refuses_writes_is_one_line(inputs):
    assert_one_line_error(convert(inputs, "/sys/xlm-converted"), "cannot write /sys/xlm-converted")


def test_an_output_in_a_directory_without_write_permission_is_one_line(tmp_path, inputs):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    prefix = tuple(unprivileged_prefix())  # root writes anywhere; without two capabilities it cannot
    assert_one_line_error(convert(inputs, locked / "out", prefix=prefix), "Permission denied")


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, inputs, monkeypatch, capsys):
    def full(tensors, path):
        path.write_bytes(b"the first bytes")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(xlm.convert, "write_safetensors", full)
    checkpoint, codes = inputs
    out = tmp_path / "converted"
    assert xlm.convert.main([str(checkpoint), "--codes", str(codes), "--out", str(out)], prog="xlm convert") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"xlm convert: error: cannot write {out}: No space left on device: ")
    assert not out.exists() and leftovers(tmp_path) == []
