"""From a hub id to a verified local checkpoint: `weights/<name>/` with config, tokenizer files and safetensors.

    python scripts/download_weights.py xlm-clm-enfr-1024            # -> weights/xlm-clm-enfr-1024/

Steps: fetch the files through huggingface_hub's cache (xlm/hub.py: its progress bars, its resumable downloads,
`HF_HUB_OFFLINE`); copy them into a temporary sibling of `weights/<name>/`, checking each large file's sha256
against the hub's (the cache names those blobs by their sha256); convert a `pytorch_model.bin` to
`model.safetensors` (read weights-only, the tied head checked and dropped, bytes that depend on the tensors only);
check every tensor's name and shape against config.json; write `manifest.json`; rename the directory into place.
An interrupted run leaves nothing under the final name.

Running it again is cheap: a complete directory whose manifest names the same repository and revision is verified
(sizes and sha256) and left alone. `force=True` downloads again and replaces it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from tqdm.auto import tqdm

from xlm.checkpoint import load_state_dict_into, read_state_dict, read_torch_pickle
from xlm.cliutil import OneLineParser, run_tool
from xlm.config import from_hf_config
from xlm.convert import transformers_state_dict
from xlm.errors import CheckpointError
from xlm.files import atomic_directory, write_json, write_safetensors
from xlm.hub import CONFIG_FILE, TOKENIZER_FILES, WEIGHT_FILES, HubSnapshot, hub_repo_id, shard_files

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Copied when the repository has them: languages and lowercasing, generation defaults, the model card (licence).
OPTIONAL_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "README.md")
CONVERSION_NOTE = (
    "read with torch.load(weights_only=True); pred_layer.proj.weight checked equal to transformer.embeddings.weight "
    "and dropped (tied); tensors saved contiguous, sorted, metadata {'format': 'pt'}"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def download(
    name: str,
    out_dir: str | Path = "weights",
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Snapshot a hub checkpoint into `out_dir/<name>/` and return that directory.

    name: a hub id (`FacebookAI/xlm-clm-enfr-1024`) or a legacy short name (`xlm-clm-enfr-1024`); the directory is
        named after the repository (`weights/xlm-clm-enfr-1024`), which also tells loaders its objective.
    revision: a branch, tag or commit (default main). cache_dir, local_files_only: as for huggingface_hub.
    force: download again and replace an existing directory. progress: show progress bars.
    """
    repo_id = hub_repo_id(name)
    final = Path(out_dir) / repo_id.split("/")[-1]
    if final.exists() and not force:
        _check_same_request(final, repo_id, revision)
        verify_download(final, progress=progress)
        logger.info("%s is complete and matches its manifest", final)
        return final
    hub = HubSnapshot(repo_id, revision, cache_dir, local_files_only)
    cache = Path(cache_dir or constants.HF_HUB_CACHE)  # read from: the output may not hold it
    with atomic_directory(final, replace=force, inputs=[cache]) as tmp:
        files = _fetch(hub)
        converted = _copy(files, tmp, progress)
        _check_weights(tmp)
        manifest = {
            "format": MANIFEST_FORMAT, "source": repo_id, "revision": revision or "main", "commit": hub.revision,
            "files": {path.name: _file_entry(path, progress) for path in sorted(tmp.iterdir())},
            "converted": converted,
        }  # fmt: skip
        write_json(tmp / MANIFEST, manifest)
    return final


def _fetch(hub: HubSnapshot) -> dict[str, Path]:
    """The repository's files in the hub cache, by name: config, weights (and shards), tokenizer, extras."""
    files = {name: hub.fetch(name) for name in (CONFIG_FILE, *TOKENIZER_FILES)}
    weights = hub.fetch_first(WEIGHT_FILES)
    files[weights.name] = weights
    if weights.name.endswith(".index.json"):
        files.update({shard: hub.fetch(shard) for shard in shard_files(weights)})
    for name in OPTIONAL_FILES:
        if (path := hub.fetch(name, required=False)) is not None:
            files[name] = path
    return files


def _copy(files: dict[str, Path], directory: Path, progress: bool) -> dict[str, Any] | None:
    """Copy the fetched files into `directory`, a pickled checkpoint as safetensors; the conversion's record."""
    converted = None
    for name, source in files.items():
        digest = _checked_against_hub(source, progress)
        if name == "pytorch_model.bin":
            logger.info("converting %s to model.safetensors", name)
            write_safetensors(transformers_state_dict(read_torch_pickle(source)), directory / "model.safetensors")
            source_entry = {"size": source.stat().st_size, "sha256": digest or sha256(source, progress)}
            converted = {"model.safetensors": {"from": name, **source_entry, "how": CONVERSION_NOTE}}
        else:
            shutil.copyfile(source, directory / name)
    return converted


def _checked_against_hub(path: Path, progress: bool) -> str | None:
    """The sha256 of a large (LFS) file, checked against the hub's: the cache names its blob by that sha256.

    None for a small file (git stores it; its blob is named by a git hash, which is not checked here).
    """
    expected = path.resolve().name
    if not _SHA256.fullmatch(expected):
        return None
    actual = sha256(path, progress)
    if actual != expected:
        raise CheckpointError(f"{path} is corrupt: its sha256 is {actual}, the hub's is {expected}")
    return actual


def _check_weights(directory: Path) -> None:
    """Every tensor's name and shape against config.json, on the meta device (no copy of the data)."""
    config = from_hf_config(directory / CONFIG_FILE, name=directory.name)
    weights = next(directory / name for name in WEIGHT_FILES if (directory / name).is_file())
    load_state_dict_into(config, read_state_dict(weights), torch.float32, "meta")


def _check_same_request(directory: Path, repo_id: str, revision: str | None) -> None:
    """An existing download must be of the repository and revision asked for (a branch, or the commit itself)."""
    manifest = read_manifest(directory)
    wanted = revision or "main"
    if manifest.get("source") != repo_id or wanted not in (manifest.get("revision"), manifest.get("commit")):
        raise CheckpointError(
            f"{directory} holds {manifest.get('source')} at {manifest.get('revision')}, not {repo_id} at {wanted}; "
            "pass --force to replace it"
        )


def read_manifest(directory: Path) -> dict[str, Any]:
    """A download directory's manifest.json, checked for the fields the checks below read."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} ({err}); pass --force to download again") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise CheckpointError(f"{path} is not a download manifest; pass --force to download again")
    return manifest


def verify_download(directory: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """The manifest of a downloaded checkpoint, after checking every file it lists (size, then sha256)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, entry in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {MANIFEST}); pass --force to download again")
        if path.stat().st_size != entry.get("size") or sha256(path, progress) != entry.get("sha256"):
            raise CheckpointError(f"{path} does not match {MANIFEST} (size or sha256); pass --force to download again")
    return manifest


def sha256(path: str | Path, progress: bool = False) -> str:
    """The sha256 of a file, read in 1 MiB chunks (a progress bar for the large ones)."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = tqdm(
        total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress or size < 1 << 26
    )
    with path.open("rb") as f, bar:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _file_entry(path: Path, progress: bool) -> dict[str, Any]:
    return {"size": Path(path).stat().st_size, "sha256": sha256(path, progress)}


def build_parser(prog: str = "download_weights") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Download an XLM checkpoint from the hub into weights/<name>/.")
    parser.add_argument("name", help="hub id (FacebookAI/xlm-clm-enfr-1024) or short name (xlm-clm-enfr-1024)")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.add_argument("--out", default="weights", metavar="DIR", help="parent directory (default weights)")
    parser.add_argument("--cache-dir", help="huggingface_hub cache (default $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    parser.add_argument("--offline", action="store_true", help="use the hub cache only (as HF_HUB_OFFLINE=1 does)")
    parser.add_argument("--force", action="store_true", help="download again and replace an existing directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None, prog: str = "download_weights") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_tool(prog, lambda: _download_and_report(args))


def _download_and_report(args: argparse.Namespace) -> int:
    directory = download(
        args.name, args.out, revision=args.revision, cache_dir=args.cache_dir,
        local_files_only=True if args.offline else None, force=args.force, progress=not args.quiet,
    )  # fmt: skip
    manifest = read_manifest(directory)
    size = sum(entry["size"] for entry in manifest["files"].values())
    print(f"{directory}: {manifest['source']} at {manifest['commit']}, {len(manifest['files'])} files, {size:,} bytes")
    return 0
