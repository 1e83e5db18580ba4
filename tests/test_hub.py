"""Hub ids, revisions and downloads, offline: a hand-built huggingface_hub cache, and no network (conftest).

The published layout of the real repositories is reproduced at a tiny size: config.json, tokenizer files, and
either model.safetensors or only the 2019 pytorch_model.bin, which stores the tied head a second time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path
from unittest.mock import Mock

import pytest
import torch
from conftest import random_ids
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file

import xlm.download
import xlm.hub
from xlm.checkpoint import load_pretrained
from xlm.download import download, main, sha256, verify_download
from xlm.errors import CheckpointError, TokenizerError
from xlm.hub import resolve, resolve_checkpoint, resolve_tokenizer
from xlm.parity import load_transformers_model
from xlm.tokenizer import Tokenizer

REPO = "FacebookAI/xlm-clm-enfr-1024"
SHORT = "xlm-clm-enfr-1024"
COMMIT = "3385d1c5b1c3f1e7a4a1c6a0d5f4f0e9b8c7d6e5"
OLD_COMMIT = "41069c56a95b158d1b37fb20e0a710fe4d794a8f"
TOKENIZER = ("vocab.json", "merges.txt", "tokenizer_config.json")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _empty_working_directory(tmp_path, monkeypatch):
    """Run in an empty directory: a local path with a hub id's name would win over the hub."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def published_files(checkpoint: Path, bin_path: Path | None = None, head_offset: float = 0.0) -> dict:
    """A checkpoint directory's files as a hub repository publishes them.

    With `bin_path`, the 2019 layout instead of model.safetensors: a torch pickle written there, whose
    `pred_layer.proj.weight` is a copy of the embeddings (plus `head_offset`, to make it differ).
    """
    files = {name: checkpoint / name for name in ("config.json", *TOKENIZER)}
    if bin_path is None:
        files["model.safetensors"] = checkpoint / "model.safetensors"
    else:
        state = load_file(checkpoint / "model.safetensors")
        state["pred_layer.proj.weight"] = state["transformer.embeddings.weight"].clone() + head_offset
        torch.save(state, bin_path)
        files["pytorch_model.bin"] = bin_path
    return files


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def published(fake_hub, tiny_checkpoint):
    """The tiny xlm-clm-enfr-1024 on the fake hub as model.safetensors at main; returns its source directory."""
    checkpoint = tiny_checkpoint(SHORT)
    fake_hub.add(REPO, COMMIT, published_files(checkpoint))
    return checkpoint


def assert_logits_equal(ours, theirs, width: int) -> None:
    """Our logits equal transformers' within 1e-5 (fp32) on a 2 x width batch, one row per language, both modes."""
    input_ids = random_ids(ours.config.vocab_size, (2, width))
    langs = torch.tensor([[0], [1]]).expand(2, width)
    for causal in (False, True):
        theirs.transformer.causal = causal
        with torch.no_grad():
            expected = theirs(input_ids=input_ids, langs=langs).logits
            torch.testing.assert_close(ours(input_ids, langs, causal=causal), expected, rtol=0, atol=1e-5)


# --- Loading by hub id --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [REPO, SHORT], ids=["hub-id", "legacy-short-name"])
def test_load_by_hub_id_from_the_cache(published, name):
    model = load_pretrained(name, local_files_only=True)
    assert same_weights(model, load_pretrained(published))
    assert model.config.objective == "clm"  # from the repository's name: the snapshot folder is a commit


def test_load_by_revision(fake_hub, tiny_checkpoint):
    old = published_files(tiny_checkpoint(SHORT, seed=1))
    fake_hub.add(REPO, OLD_COMMIT, old, refs=("v1",))
    new = tiny_checkpoint(SHORT, seed=2)  # the same directory, overwritten: copy the files first
    fake_hub.add(REPO, COMMIT, published_files(new))
    reference = load_pretrained(new)
    assert same_weights(load_pretrained(REPO, local_files_only=True), reference)
    by_commit = load_pretrained(REPO, revision=OLD_COMMIT, local_files_only=True)
    by_tag = load_pretrained(REPO, revision="v1", local_files_only=True)
    assert same_weights(by_commit, by_tag) and not same_weights(by_commit, reference)


def test_hf_hub_offline_is_honoured(published, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert same_weights(load_pretrained(REPO), load_pretrained(published))  # local_files_only left to the env


def test_a_local_path_wins_over_the_hub(published, tiny_checkpoint):
    local = Path(REPO)
    shutil.copytree(tiny_checkpoint("xlm-mlm-enfr-1024", seed=5), local)
    assert same_weights(load_pretrained(REPO), load_pretrained(local))
    with pytest.raises(CheckpointError, match=r"local path; a revision"):
        load_pretrained(REPO, revision="main")


@pytest.mark.parametrize(
    ("drop", "revision", "message"),
    [
        (
            "config.json",
            None,
            r"config\.json of FacebookAI/xlm-clm-enfr-1024 \(revision main\) is not in the hub cache",
        ),
        ("model.safetensors", None, r"FacebookAI/xlm-clm-enfr-1024 .* has none of model\.safetensors, .*pytorch_model"),
        (None, "v2", r"config\.json of FacebookAI/xlm-clm-enfr-1024 \(revision v2\)"),
    ],
    ids=["config", "weights", "revision"],
)
def test_a_missing_file_names_the_repository_and_the_file(fake_hub, tiny_checkpoint, drop, revision, message):
    files = published_files(tiny_checkpoint(SHORT))
    files.pop(drop, None)
    fake_hub.add(REPO, COMMIT, files)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(REPO, revision=revision, local_files_only=True)


def test_names_that_are_neither_paths_nor_hub_ids(fake_hub):
    with pytest.raises(CheckpointError, match=r"FacebookAI/xlm-mlm-en-2048 .* not in the hub cache"):
        load_pretrained("xlm-mlm-en-2048", local_files_only=True)  # a known name, never downloaded
    with pytest.raises(
        CheckpointError, match="no checkpoint at /no/such/dir: no such file or directory, and not a hub id"
    ):
        load_pretrained("/no/such/dir")  # refused before any network access


def test_tokenizer_files_resolve_with_the_optional_config(fake_hub, tiny_checkpoint):
    files = published_files(tiny_checkpoint(SHORT))
    files.pop("tokenizer_config.json")
    fake_hub.add(REPO, COMMIT, files)
    directory = resolve_tokenizer(SHORT, local_files_only=True)
    assert directory.name == COMMIT and {"vocab.json", "merges.txt"} <= {p.name for p in directory.iterdir()}
    assert resolve_tokenizer(directory) == directory  # a local directory is itself
    with pytest.raises(CheckpointError, match=r"special_tokens_map\.json of FacebookAI/xlm-clm-enfr-1024"):
        resolve(REPO, ("special_tokens_map.json",), local_files_only=True)


@pytest.mark.parametrize("name", [REPO, SHORT], ids=["hub-id", "legacy-short-name"])
def test_tokenizer_by_hub_id_and_revision(fake_hub, tiny_checkpoint, name):
    fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT)))
    tokenizer = Tokenizer.from_pretrained(name, revision=COMMIT, local_files_only=True)
    local = Tokenizer.from_pretrained(tiny_checkpoint(SHORT))
    assert tokenizer.encode("Le chat, l'été.", "fr") == local.encode("Le chat, l'été.", "fr")
    assert tokenizer.lang2id == {"en": 0, "fr": 1}
    with pytest.raises(TokenizerError, match=r"FacebookAI/xlm-clm-enfr-1024 \(revision v9\)"):
        Tokenizer.from_pretrained(name, revision="v9", local_files_only=True)


# --- The published layout: pytorch_model.bin only, the head stored twice -------------------------------------


def test_published_bin_layout_loads_and_equals_transformers(fake_hub, tiny_checkpoint, monkeypatch, tmp_path):
    fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT), tmp_path / "pytorch_model.bin"))
    monkeypatch.setattr(xlm.hub, "_said_pickle", False)
    with pytest.warns(UserWarning, match=r"no model\.safetensors: reading its pytorch_model\.bin .*weights_only=True"):
        ours = load_pretrained(REPO, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process
        load_pretrained(REPO, local_files_only=True)

    theirs = load_transformers_model(resolve_checkpoint(REPO, local_files_only=True))
    assert_logits_equal(ours, theirs, width=11)


def test_a_stored_head_that_differs_from_the_embeddings_is_reported(fake_hub, tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setattr(xlm.hub, "_said_pickle", True)
    fake_hub.add(
        REPO, COMMIT, published_files(tiny_checkpoint(SHORT), tmp_path / "pytorch_model.bin", head_offset=1e-3)
    )
    with pytest.raises(CheckpointError, match=r"stores pred_layer\.proj\.weight different from the word embeddings"):
        load_pretrained(REPO, local_files_only=True)


# --- download -------------------------------------------------------------------------------------------------


def test_download_converts_the_bin_to_stable_safetensors(fake_hub, tiny_checkpoint, tmp_path):
    source = tiny_checkpoint(SHORT)
    fake_hub.add(REPO, COMMIT, published_files(source, tmp_path / "pytorch_model.bin"))
    first = download(SHORT, "weights", local_files_only=True, progress=False)
    second = download(REPO, "again", local_files_only=True, progress=False)
    assert first == Path("weights", SHORT)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert sorted(p.name for p in first.iterdir()) == sorted(
        ["config.json", *TOKENIZER, "model.safetensors", "manifest.json"]
    )

    manifest = json.loads((first / "manifest.json").read_text())
    assert (manifest["source"], manifest["revision"], manifest["commit"]) == (REPO, "main", COMMIT)
    for name, entry in manifest["files"].items():
        assert entry == {"size": (first / name).stat().st_size, "sha256": sha256(first / name)}
    converted = manifest["converted"]["model.safetensors"]
    assert converted["from"] == "pytorch_model.bin" and converted["sha256"] == sha256(tmp_path / "pytorch_model.bin")
    assert "pred_layer.proj.weight" not in load_file(first / "model.safetensors")

    ours = load_pretrained(first)
    assert ours.config.objective == "clm" and same_weights(ours, load_pretrained(source))
    assert load_transformers_model(first).transformer.embeddings.weight.equal(ours.embeddings.weight)


def test_download_of_safetensors_copies_them_as_published(published):
    directory = download(SHORT, local_files_only=True, progress=False)
    assert (directory / "model.safetensors").read_bytes() == (published / "model.safetensors").read_bytes()
    assert json.loads((directory / "manifest.json").read_text())["converted"] is None


def test_download_again_verifies_and_keeps_the_directory(published):
    directory = download(SHORT, local_files_only=True, progress=False)
    stamp = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert download(SHORT, local_files_only=True, progress=False) == directory
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == stamp

    with (directory / "model.safetensors").open("r+b") as f:  # one flipped byte
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors does not match manifest\.json \(size or sha256\); pass --force"
    ):
        download(SHORT, local_files_only=True, progress=False)
    download(SHORT, local_files_only=True, progress=False, force=True)
    verify_download(directory)


def test_download_of_another_revision_needs_force(fake_hub, tiny_checkpoint):
    fake_hub.add(REPO, OLD_COMMIT, published_files(tiny_checkpoint(SHORT, seed=1)), refs=("v1",))
    fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT, seed=2)))
    directory = download(SHORT, local_files_only=True, progress=False)
    assert download(SHORT, revision=COMMIT, local_files_only=True, progress=False) == directory  # main's commit
    with pytest.raises(
        CheckpointError, match=r"holds FacebookAI/xlm-clm-enfr-1024 at main, not .* at v1; pass --force"
    ):
        download(SHORT, revision="v1", local_files_only=True, progress=False)
    download(SHORT, revision="v1", local_files_only=True, progress=False, force=True)
    assert json.loads((directory / "manifest.json").read_text())["commit"] == OLD_COMMIT


def _interrupt_second_copy(monkeypatch):
    copies, original = [], shutil.copyfile

    def copyfile(source, target):
        copies.append(target)
        if len(copies) == 2:
            raise KeyboardInterrupt
        return original(source, target)

    monkeypatch.setattr(xlm.download.shutil, "copyfile", copyfile)


def _interrupt_safetensors_write(monkeypatch):
    def write(tensors, path):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(xlm.download, "write_safetensors", write)


@pytest.mark.parametrize("interrupt", [_interrupt_second_copy, _interrupt_safetensors_write], ids=["copy", "convert"])
def test_an_interrupted_download_leaves_nothing_under_the_final_name(
    fake_hub, tiny_checkpoint, monkeypatch, tmp_path, interrupt
):
    fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT), tmp_path / "pytorch_model.bin"))
    interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        download(SHORT, local_files_only=True, progress=False)
    assert list(Path("weights").iterdir()) == []  # no final directory, no temporary one


def test_a_killed_download_is_cleaned_up_by_the_next_one(published):
    stale = Path("weights", f".{SHORT}.partial-killed")
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    directory = download(SHORT, local_files_only=True, progress=False)
    assert sorted(p.name for p in Path("weights").iterdir()) == [SHORT]
    verify_download(directory)


def test_a_corrupt_cached_file_is_caught(fake_hub, tiny_checkpoint):
    snapshot = fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT)))
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt: its sha256 is [0-9a-f]+, the hub's is"):
        download(SHORT, local_files_only=True, progress=False)
    assert not Path("weights", SHORT).exists()


def test_download_script(published, capsys):
    assert main([SHORT, "--offline", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"weights/{SHORT}: {REPO} at {COMMIT}, 5 files")
    assert main(["xlm-mlm-en-2048", "--offline", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("download_weights: error: config.json of FacebookAI/xlm-mlm-en-2048") and err.count("\n") == 1


def test_xlm_download_verb_through_a_subprocess(published, fake_hub):
    """`xlm download` as a user runs it: offline from the hub cache, then one bad name (exit 2, one line)."""
    env = {**os.environ, "HF_HUB_CACHE": str(fake_hub.root), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = partial(subprocess.run, capture_output=True, text=True, env=env, timeout=300)
    result = run([sys.executable, "-m", "xlm", "download", SHORT, "--quiet"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"weights/{SHORT}: {REPO} at {COMMIT}") and verify_download(Path("weights", SHORT))
    result = run([sys.executable, "-m", "xlm", "download", "xlm-mlm-en-2048", "--quiet"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("xlm download: error: config.json of FacebookAI/xlm-mlm-en-2048")


@pytest.mark.slow
def test_full_size_published_bin_downloads_and_equals_transformers(fake_hub, full_size_checkpoint, tmp_path):
    """The 2019 file at its real size: 207,526,539 floats (830,106,156 bytes), the 64139 x 1024 head twice."""
    files = published_files(full_size_checkpoint, tmp_path / "pytorch_model.bin")
    assert 830_106_156 < files["pytorch_model.bin"].stat().st_size < 830_106_156 + 100_000
    fake_hub.add(REPO, COMMIT, files)
    directory = download(SHORT, local_files_only=True, progress=False)
    ours = load_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the once-per-process notice about reading the .bin
        assert same_weights(load_pretrained(REPO, local_files_only=True), ours)
    theirs = load_transformers_model(resolve_checkpoint(REPO, local_files_only=True))  # transformers reads the .bin
    assert_logits_equal(ours, theirs, width=32)


# --- Online: hf_hub_download's behaviour, served from a snapshot ---------------------------------------------


def serve_online(monkeypatch, snapshot: Path, error: Exception | None = None) -> list[tuple[str, str | None]]:
    """Replace hf_hub_download by one that answers like the hub (or fails with `error`); returns its requests."""
    requests = []

    def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None):
        requests.append((filename, revision))
        if error is not None:
            raise error
        if not (snapshot / filename).exists():
            raise RemoteEntryNotFoundError(f"404 Client Error: Entry Not Found for {filename}", response=Mock())
        return str(snapshot / filename)

    monkeypatch.setattr(xlm.hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(xlm.hub, "get_hf_file_metadata", lambda url, timeout: None)  # the probe: the hub answers
    return requests


def test_online_files_come_from_one_commit_and_the_bin_is_the_fallback(
    fake_hub, tiny_checkpoint, tmp_path, monkeypatch
):
    snapshot = fake_hub.add(REPO, COMMIT, published_files(tiny_checkpoint(SHORT), tmp_path / "pytorch_model.bin"))
    requests = serve_online(monkeypatch, snapshot)
    monkeypatch.setattr(xlm.hub, "_said_pickle", True)
    assert resolve_checkpoint(SHORT, local_files_only=False) == snapshot
    assert requests == [
        ("config.json", None),  # main, resolved to a commit by this first answer
        ("model.safetensors", COMMIT),
        ("model.safetensors.index.json", COMMIT),
        ("pytorch_model.bin", COMMIT),
    ]
    with pytest.raises(CheckpointError, match=r"FacebookAI/xlm-clm-enfr-1024 has no file special_tokens_map\.json"):
        resolve(REPO, ("special_tokens_map.json",), local_files_only=False)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            RepositoryNotFoundError("404", response=Mock()),
            "no checkpoint at FacebookAI/xlm-clm-enfr-1024: no such local path, nor hub repository",
        ),
        (GatedRepoError("403", response=Mock()), r"FacebookAI/xlm-clm-enfr-1024 is gated: accept its terms"),
        (RevisionNotFoundError("404", response=Mock()), "FacebookAI/xlm-clm-enfr-1024 has no revision 'v9'"),
        (LocalEntryNotFoundError("no connection"), r"cannot reach the hub for config\.json of .* \(revision v9\)"),
    ],
    ids=["repository", "gated", "revision", "unreachable"],
)
def test_hub_errors_become_one_line_errors(fake_hub, monkeypatch, tmp_path, error, message):
    serve_online(monkeypatch, tmp_path, error)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(SHORT, revision="v9", local_files_only=False)


# --- The hub out of reach: one probe without retries, then the cache ---------------------------------------------


def refuse_connections(monkeypatch) -> list[str]:
    """The probe's request is refused (as by a closed port); any download attempt fails the test."""
    probes = []

    def probe(url, timeout):
        probes.append(url)
        raise ConnectionRefusedError(111, "Connection refused")

    def no_download(*args, **kwargs):
        raise AssertionError("hf_hub_download called although the hub did not answer (its retries take ~25 s)")

    monkeypatch.setattr(xlm.hub, "get_hf_file_metadata", probe)
    monkeypatch.setattr(xlm.hub, "hf_hub_download", no_download)
    return probes


def test_an_unreachable_hub_is_asked_once_then_the_cache_is_used(published, monkeypatch):
    cached = resolve_checkpoint(SHORT, local_files_only=True)
    probes = refuse_connections(monkeypatch)
    assert resolve_checkpoint(SHORT, local_files_only=False) == cached
    assert len(probes) == 1 and probes[0].endswith("/FacebookAI/xlm-clm-enfr-1024/resolve/main/config.json")


def test_an_unreachable_hub_without_the_files_cached_says_how_to_work_offline(fake_hub, monkeypatch):
    probes = refuse_connections(monkeypatch)
    with pytest.raises(CheckpointError) as err:
        load_pretrained("someone/some-xlm", local_files_only=False)
    message = str(err.value)
    assert message.startswith("config.json of someone/some-xlm (revision main) is not in the hub cache and ")
    assert "did not answer ([Errno 111] Connection refused)" in message and "\n" not in message
    assert "HF_HUB_OFFLINE=1" in message and "local checkpoint directory" in message and "--synthetic" in message
    assert len(probes) == 1


def test_a_download_while_another_writer_holds_the_output_is_refused(published):
    from xlm.files import output_lock

    Path("weights").mkdir()
    held = r"another process \(pid \d+\) is writing weights/xlm-clm-enfr-1024"
    # Held as a second process would hold it: flock excludes every other open file, in this process too.
    with output_lock(Path("weights", SHORT)), pytest.raises(CheckpointError, match=held):
        download(SHORT, local_files_only=True, progress=False)
    assert not Path("weights", SHORT).exists()
    assert download(SHORT, local_files_only=True, progress=False) == Path("weights", SHORT)  # once it is gone
