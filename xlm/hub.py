"""Where checkpoint files come from: a local path, or a Hugging Face hub repository through huggingface_hub.

A name is resolved in this order:
1. a local file or directory that exists is used as it is (so `weights/xlm-clm-enfr-1024` never reaches the hub);
2. one of the ten legacy short names (`xlm-clm-enfr-1024`, the names of `xlm.config.PRESETS`) means its
   `FacebookAI/` repository: the hub has moved them there and redirects the old names only online;
3. anything else is a hub id, `ORG/NAME`.

Hub files go through huggingface_hub's own cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`), so a file is downloaded once and shared with transformers. `local_files_only=True`, or
`HF_HUB_OFFLINE=1` in the environment, reads the cache and never touches the network. All files of one call come
from one commit: the first file pins the revision (a branch or tag can move between two requests).

Weights are taken in the order of `WEIGHT_FILES`. xlm-clm-enfr-1024's main branch has no `model.safetensors`, only
the 2019 `pytorch_model.bin`: such a file is read with `torch.load(weights_only=True)`, which rebuilds tensors and
plain containers and runs no code from the file, and the first time it happens we say so.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    is_offline_mode,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from xlm.config import PRESETS
from xlm.errors import CheckpointError

HUB_ORG = "FacebookAI"
CONFIG_FILE = "config.json"
# In order of preference: safetensors is read without unpickling; the index names safetensors shards.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_OPTIONAL_FILES = ("tokenizer_config.json",)  # languages and lowercasing; transformers has defaults
_COMMIT = re.compile(r"[0-9a-f]{40}")
# One request without retries, before the first download: huggingface_hub retries a refused connection 5 times
# over ~25 s. A hub that does not answer within this many seconds is taken to be out of reach.
PROBE_TIMEOUT_S = 5.0
OFFLINE_HINT = (
    "to work offline, set HF_HUB_OFFLINE=1 with the files in the hub cache, pass a local checkpoint directory, "
    "or try --synthetic PRESET"
)
_said_pickle = False  # the weights-only notice is given once per process


def hub_repo_id(name: str) -> str:
    """The hub repository of a name: a legacy short name becomes its `FacebookAI/` id, other names are kept."""
    return f"{HUB_ORG}/{name}" if name in PRESETS else name


def resolve(
    name_or_path: str | Path,
    files: Sequence[str],
    *,
    optional: Sequence[str] = (),
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local path holding `files`: `name_or_path` itself if it exists, else the hub snapshot directory.

    Every name in `files` must exist in the repository; those in `optional` are fetched when they exist.
    local_files_only: None follows `HF_HUB_OFFLINE`. Errors are one-line `CheckpointError`s naming the repository
    and the file.
    """
    local = _existing_path(name_or_path, revision)
    if local is not None:
        return local
    if not files:
        raise ValueError("resolve needs at least one required file: it names the snapshot")
    hub = HubSnapshot(str(name_or_path), revision, cache_dir, local_files_only)
    for filename in files:
        hub.fetch(filename)
    for filename in optional:
        hub.fetch(filename, required=False)
    return hub.directory


def resolve_checkpoint(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local checkpoint directory or weights file: `config.json` plus the first of `WEIGHT_FILES` the hub has."""
    local = _existing_path(name_or_path, revision)
    if local is not None:
        return local
    hub = HubSnapshot(str(name_or_path), revision, cache_dir, local_files_only)
    hub.fetch(CONFIG_FILE)
    weights = hub.fetch_first(WEIGHT_FILES)
    if weights.name.endswith(".index.json"):
        for shard in shard_files(weights):
            hub.fetch(shard)
    if weights.suffix == ".bin":
        _say_pickle_is_read_safely(hub.repo_id)
    return hub.directory


def resolve_tokenizer(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local directory with the tokenizer files (`vocab.json`, `merges.txt`, `tokenizer_config.json` if any)."""
    return resolve(
        name_or_path, TOKENIZER_FILES, optional=TOKENIZER_OPTIONAL_FILES, revision=revision, cache_dir=cache_dir,
        local_files_only=local_files_only,
    )  # fmt: skip


def read_weight_map(index: Path) -> dict[str, str]:
    """A `model.safetensors.index.json`'s `weight_map`: tensor name -> shard file name (a plain name, no path)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read shard index {index}: {err}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"shard index {index}: weight_map is not an object of tensor name -> shard file")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"shard index {index} names {shard!r}: a shard must be a file beside the index")
    return weight_map


def shard_files(index: Path) -> list[str]:
    """The shard file names that a `model.safetensors.index.json` points to."""
    return sorted(set(read_weight_map(index).values()))


def _existing_path(name_or_path: str | Path, revision: str | None) -> Path | None:
    """`name_or_path` as a local path if it exists: a local path always wins over a hub id."""
    local = Path(name_or_path)
    try:
        if not local.exists():
            return None
    except OSError as err:  # a parent directory that cannot be searched: the path is local, and unreadable
        raise CheckpointError(f"cannot read {local}: {err.strerror or err}") from None
    if revision is not None:
        raise CheckpointError(f"{local} is a local path; a revision ({revision!r}) only applies to hub ids")
    return local


class HubSnapshot:
    """The files of one hub repository at one commit, fetched into huggingface_hub's cache one by one.

    `directory` is the snapshot folder holding the files fetched so far; once one file is in, `revision` is the
    commit it came from, and the next files come from that commit too.
    """

    def __init__(self, name: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool | None):
        self.repo_id = hub_repo_id(name)
        self.revision = revision  # becomes the commit once the first file is in
        self.requested = revision or "main"
        self.cache_dir = cache_dir
        self.offline = is_offline_mode() if local_files_only is None else local_files_only
        self.directory: Path | None = None
        self.probed = False  # online: whether the hub has been asked if it answers (`_probe`)
        self.unreachable: str | None = None  # why the hub is taken to be out of reach
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError:
            raise CheckpointError(f"no checkpoint at {name}: no such file or directory, and not a hub id") from None

    def fetch(self, filename: str, required: bool = True) -> Path | None:
        """The local path of `filename`; None for a missing file that is not required."""
        path = self._from_cache(filename) if self.offline else self._download(filename)
        if path is None:
            if not required:
                return None
            if self.unreachable:
                what = self._what(filename)
                raise CheckpointError(f"{what} is not in the hub cache and {self.unreachable}; {OFFLINE_HINT}")
            if self.offline:
                raise CheckpointError(f"{self._what(filename)} is not in the hub cache, and downloads are off")
            raise CheckpointError(f"{self.repo_id} has no file {filename} at revision {self.requested}")
        # The cache keeps each commit in snapshots/<commit>/: later files come from this same commit.
        snapshot = path.parents[len(Path(filename).parts) - 1]
        if self.directory is None and _COMMIT.fullmatch(snapshot.name):
            self.revision = snapshot.name
        self.directory = snapshot
        return path

    def _from_cache(self, filename: str) -> Path | None:
        """Offline: a look-up in the cache's folders, nothing else.

        Not `hf_hub_download(local_files_only=True)`: huggingface_hub 2.x still contacts the hub from it, once
        per process, to build its user-agent header (caught by the tests' network guard).
        """
        found = try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir, revision=self.revision)
        return Path(found) if isinstance(found, str) else None

    def _probe(self, filename: str) -> None:
        """Ask the hub once, without retries, whether it answers; if not, read the cache from now on.

        A file the cache lacks is then a one-line error at once, saying how to work offline, instead of
        huggingface_hub's ~25 s of retries and warnings before the same conclusion.
        """
        self.probed = True
        url = hf_hub_url(self.repo_id, filename, revision=self.revision)
        try:
            get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
        except HfHubHTTPError:
            return  # the hub answered (401, 404, ...): the download below explains the answer
        except Exception as err:  # no answer: refused, DNS, timeout, proxy (the HTTP client's types vary by version)
            self.offline = True
            self.unreachable = f"{constants.ENDPOINT} did not answer ({str(err).splitlines()[0] or type(err).__name__})"

    def _download(self, filename: str) -> Path | None:
        """Online: the cached file if it is current, else a download; None for a file the repository lacks."""
        if not self.probed:
            self._probe(filename)
            if self.offline:
                return self._from_cache(filename)
        try:
            path = hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=self.cache_dir)
        except LocalEntryNotFoundError:  # raised when the hub is unreachable and the file is not cached
            raise CheckpointError(f"cannot reach the hub for {self._what(filename)}, and it is not cached") from None
        except EntryNotFoundError:
            return None
        except OSError as err:  # huggingface_hub's HTTP errors are OSErrors
            raise CheckpointError(self._explain(err, filename)) from None
        return Path(path)

    def _explain(self, err: OSError, filename: str) -> str:
        if isinstance(err, GatedRepoError):
            return f"{self.repo_id} is gated: accept its terms on the hub, then log in (`hf auth login`)"
        if isinstance(err, RepositoryNotFoundError):
            return (
                f"no checkpoint at {self.repo_id}: no such local path, nor hub repository (private ones need a login)"
            )
        if isinstance(err, RevisionNotFoundError):
            return f"{self.repo_id} has no revision {self.requested!r}"
        return f"cannot download {self._what(filename)}: {err}".splitlines()[0]

    def _what(self, filename: str) -> str:
        return f"{filename} of {self.repo_id} (revision {self.requested})"

    def fetch_first(self, filenames: Sequence[str]) -> Path:
        """The first of `filenames` that the repository has (offline: that the cache has)."""
        for filename in filenames:
            path = self.fetch(filename, required=False)
            if path is not None:
                return path
        where = "in the hub cache" if self.offline else "in the repository"
        raise CheckpointError(f"{self.repo_id} (revision {self.requested}) has none of {', '.join(filenames)} {where}")


def _say_pickle_is_read_safely(repo_id: str) -> None:
    global _said_pickle
    if not _said_pickle:
        _said_pickle = True
        warnings.warn(
            f"{repo_id} has no model.safetensors: reading its pytorch_model.bin with torch.load(weights_only=True), "
            "which rebuilds tensors only and runs no code from the file. `python scripts/download_weights.py "
            f"{repo_id}` converts it to model.safetensors once.",
            stacklevel=4,  # the caller of load_pretrained
        )
