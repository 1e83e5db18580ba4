"""Bad input to the `xlm` command is one line on stderr, exit code 2, nothing on stdout: never a traceback.

Every case runs `python -m xlm` in a subprocess, as a user would. Sections: arguments; files that cannot be read;
checkpoints that contradict themselves; the hub out of reach; and inputs that look bad but are meant to work.

Tests run as root, which reads any file whatever its permissions. Where a test needs a read to be refused, the
subprocess runs without the two capabilities that let root ignore permissions (`setpriv`, from util-linux), so
the kernel refuses it as it would refuse any user; a test of a directory where a file should be needs no
privilege games at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import scaled_down, unprivileged_prefix
from safetensors.torch import load_file, save_file

from xlm.config import PRESETS
from xlm.synthetic import save_synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A scaled-down xlm-clm-enfr-1024 with its character-level tokenizer (read-only for the tests below)."""
    root = tmp_path_factory.mktemp("one-line")
    return save_synthetic_checkpoint(scaled_down(PRESETS["xlm-clm-enfr-1024"]), root / "xlm-clm-enfr-1024", seed=1)


@pytest.fixture
def own_copy(model, tmp_path) -> Path:
    """A copy of the model that a test may damage."""
    return Path(shutil.copytree(model, tmp_path / "xlm-clm-enfr-1024"))


def xlm(*args: str | bytes, env: dict[str, str] | None = None, unprivileged: bool = False, cwd: Path = ROOT):
    command = [sys.executable, "-m", "xlm", *args]
    if unprivileged:
        command = unprivileged_prefix() + command
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, verb: str, message: str) -> None:
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 2, stderr
    assert result.stdout == b"" and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"xlm {verb}: error: "), stderr
    assert message in stderr, stderr


# --- Arguments --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "1e-40"], "argument --temperature: 1e-40 is not 0 (greedy) nor a finite number >= 0.01"),
        (["--temperature", "inf"], "argument --temperature: inf is not 0 (greedy) nor a finite number"),
        (["--seed", str(2**64)], "argument --seed: 18446744073709551616 is outside 0 .. 2**64 - 1"),
        (["--device", "meta"], "device 'meta' holds no data (shapes only)"),
    ],
    ids=["tiny-temperature", "inf-temperature", "seed-2**64", "device-meta"],
)
def test_bad_generate_arguments(model, args, message):
    assert_one_line(xlm("generate", "--model", str(model), "Hi", *args), "generate", message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_parity_on_a_cuda_device_without_cuda(model):
    result = xlm("parity", "--model", str(model), "--device", "cuda", "--seq", "8")
    assert_one_line(result, "parity", "device 'cuda' is not usable here")


def test_parity_json_into_a_missing_directory_is_refused_before_the_run(model):
    result = xlm("parity", "--model", str(model), "--seq", "8", "--json", "/nonexistent/parity.json")
    assert_one_line(result, "parity", "--json /nonexistent/parity.json: no directory /nonexistent to write it in")


@pytest.mark.parametrize("args", [[b"caf\xe9"], ["Hi", "--lang", b"\xff"]], ids=["prompt", "lang"])
def test_text_that_is_not_utf8(model, args):
    """Undecodable bytes reach Python as lone surrogates; tokenized, they would be junk ids without a word."""
    assert_one_line(xlm("generate", "--model", str(model), *args), "generate", "is not valid UTF-8 text")


def test_a_missing_path_that_is_not_utf8(tmp_path):
    """The path is echoed on stderr with its bytes escaped; no UnicodeEncodeError on the way."""
    result = xlm("score", "--model", os.fsencode(tmp_path) + b"/\xff\xfe", "Hi")
    assert_one_line(result, "score", "no checkpoint at ")


def test_a_score_file_that_is_a_directory(model, tmp_path):
    assert_one_line(xlm("score", "--model", str(model), "--file", str(tmp_path)), "score", "Is a directory")


# --- Files that cannot be read ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("model.safetensors", "cannot read {dir}/model.safetensors: Permission denied"),
        ("config.json", "cannot read config {dir}/config.json: Permission denied"),
        (".", "cannot read checkpoint {dir}: Permission denied"),
    ],
    ids=["weights", "config", "folder"],
)
def test_files_without_read_permission(own_copy, target, message):
    (own_copy / target).chmod(0o000)
    result = xlm("generate", "--model", str(own_copy), "Hi", unprivileged=True)
    assert_one_line(result, "generate", message.format(dir=own_copy))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("weights-dir", "{dir}/model.safetensors is not a readable file"),
        ("weights-loop", "{dir}/model.safetensors is not a readable file"),
        ("config-dir", "cannot read config {dir}/config.json: not a regular file"),
    ],
)
def test_a_folder_or_a_link_loop_where_a_file_should_be(own_copy, damage, message):
    """What root cannot read either: a directory, or a symbolic link to itself, in place of a file."""
    name = "config.json" if damage.startswith("config") else "model.safetensors"
    (own_copy / name).unlink()
    if damage.endswith("-dir"):
        (own_copy / name).mkdir()
    elif damage.endswith("-loop"):
        (own_copy / name).symlink_to(name)
    result = xlm("generate", "--model", str(own_copy), "Hi")
    assert_one_line(result, "generate", message.format(dir=own_copy))


@pytest.mark.parametrize("case", ["device-checkpoint", "device-codes", "folder-checkpoint"])
def test_convert_from_a_device_or_a_folder(tmp_path, case):
    """/dev/zero would be read forever; a folder is no checkpoint. Neither is read."""
    regular = tmp_path / "regular"
    regular.write_bytes(b"never read")
    bad = "/dev/zero" if case.startswith("device") else str(tmp_path / "folder")
    Path(tmp_path / "folder").mkdir()
    checkpoint, codes = (regular, bad) if case.endswith("codes") else (bad, regular)
    result = xlm("convert", str(checkpoint), "--codes", str(codes), "--out", str(tmp_path / "out"))
    assert_one_line(result, "convert", f"{bad} is not a regular file")


# --- Checkpoints that contradict themselves ------------------------------------------------------------------------


def test_a_checkpoint_with_two_names_for_one_tensor(own_copy):
    state = load_file(own_copy / "model.safetensors")
    state["module.embeddings.weight"] = state["transformer.embeddings.weight"] + 1.0
    save_file(state, own_copy / "model.safetensors", metadata={"format": "pt"})
    result = xlm("score", "--model", str(own_copy), "Hi")
    assert_one_line(result, "score", "has both 'module.embeddings.weight' and 'transformer.embeddings.weight'")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_heads": 0}, "n_heads=0 is not allowed: it must be an integer >= 1"),
        ({"lang2id": ["en", "fr"]}, "lang2id=['en', 'fr'] is not allowed"),
    ],
)
def test_a_config_field_out_of_range(own_copy, change, message):
    config = json.loads((own_copy / "config.json").read_text())
    (own_copy / "config.json").write_text(json.dumps({**config, **change}))
    assert_one_line(xlm("score", "--model", str(own_copy), "Hi"), "score", message)


# --- The hub out of reach ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["score", "download"])
def test_a_hub_id_without_network_fails_fast_saying_how_to_work_offline(tmp_path, verb):
    """HF_ENDPOINT points at a closed local port (connections refused at once; nothing leaves the machine).

    huggingface_hub alone retries for ~25 s; one probe without retries answers in well under a second.
    """
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    args = ["--model", "someone/some-xlm", "Hi"] if verb == "score" else ["someone/some-xlm", "--out", str(tmp_path)]
    started = time.monotonic()
    result = xlm(verb, *args, env=env)
    elapsed = time.monotonic() - started
    assert_one_line(result, verb, "http://127.0.0.1:9 did not answer")
    for hint in ("HF_HUB_OFFLINE=1", "a local checkpoint directory", "--synthetic"):
        assert hint in result.stderr.decode()
    assert elapsed < 15, f"took {elapsed:.1f} s (interpreter start-up included)"


# --- Inputs that look bad but are meant to work --------------------------------------------------------------------


def test_model_may_name_the_weights_file(model):
    """`--model DIR/model.safetensors`: config.json and the tokenizer files are read beside it."""
    by_directory = xlm("generate", "--model", str(model), "Hi", "--max-new-tokens", "4", "--json")
    by_file = xlm("generate", "--model", str(model / "model.safetensors"), "Hi", "--max-new-tokens", "4", "--json")
    assert by_directory.returncode == by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout)["results"] == json.loads(by_directory.stdout)["results"]


def test_a_weights_file_without_a_config_beside_it(model, tmp_path):
    lone = tmp_path / "model.safetensors"
    shutil.copyfile(model / "model.safetensors", lone)
    assert_one_line(
        xlm("generate", "--model", str(lone), "Hi"), "generate", f"no config file at {tmp_path}/config.json"
    )


def test_an_output_path_that_is_not_utf8_is_printed_as_its_bytes(tmp_path):
    """convert prints the output path; undecodable bytes go back out as they came, not as an encoding error."""
    from test_convert import CODES, save_original

    (tmp_path / "codes").write_bytes(CODES)
    save_original(tmp_path / "ckpt.pth")
    out = os.fsencode(tmp_path) + b"/out-\xff"
    result = xlm("convert", str(tmp_path / "ckpt.pth"), "--codes", str(tmp_path / "codes"), "--out", out)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert result.stdout.startswith(out + b": 2 layers")


def test_a_reader_that_goes_away_ends_the_command_quietly(model):
    """`xlm generate ... | head -c 0`: exit 141 (128 + SIGPIPE, as a shell reports for such a writer), no traceback."""
    command = [sys.executable, "-m", "xlm", "generate", "--model", str(model), "Hi", "Ho", "--max-new-tokens", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # the reader is gone before the first line
        stderr = process.stderr.read()
    assert process.returncode == 141 and stderr == b"", stderr
