"""Writing output directories that are whole or absent, never touch their inputs, and have one writer at a time.

Every directory xlm writes (a converted checkpoint, a download, a training checkpoint) goes through
`atomic_directory`:

    with atomic_directory(Path("weights/xlm-clm-enfr-1024"), replace=force, inputs=[checkpoint_path]) as tmp:
        write_json(tmp / "config.json", config)
        write_safetensors(tensors, tmp / "model.safetensors")
    # here weights/xlm-clm-enfr-1024 exists and is complete; on an exception or Ctrl-C it does not exist

The promises, and how they are kept (docs/checkpoints.md lists the tests that hold each one):
- **Whole or absent.** The files are written into a sibling `.NAME.partial-<random>`, flushed to disk (fsync) and
  renamed to `NAME` at the end: a rename within one directory is atomic, so a reader sees the old directory, the
  new one, or none, after a power loss too.
- **Inputs untouched.** The output may not be an input, hold one, or hold the working directory; with
  `replace=True` it must also be empty or hold `config.json` (a directory such a writer made), so a mistyped
  `--out ~ --force` refuses instead of deleting a home directory (`marker` names another file).
- **One writer per output.** The writer holds an exclusive `fcntl.flock` on `.NAME.lock` beside the output for as
  long as it writes; a second writer of the same output gets a one-line error at once. The kernel releases the
  lock when its holder exits in any way (`kill -9` included), so a lock is never stale.
- **A killed writer's leftovers** (`.NAME.partial-*`, `.NAME.old-*`, the lock file) are removed by the next writer
  of the same output, which holds the lock: no live writer can own them. (A previous version, killed between
  moving the old directory aside and renaming the new one in, is moved back rather than deleted.)
Every `OSError` on the way (a parent that is a file, a read-only or full disk, a permission) becomes a one-line
`CheckpointError` that names the output.

flock needs a local file system; on NFS it may not exclude a writer on another machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from xlm.errors import CheckpointError

MARKER = "config.json"  # what every checkpoint directory holds: `replace` only deletes a directory with one


def write_json(path: Path, data: Any, sort_keys: bool = False) -> None:
    """JSON as transformers writes it: indent 2, ASCII escapes, a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def write_safetensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """A `model.safetensors` whose bytes depend on the tensors only: same input, same file.

    safetensors orders the entries itself; contiguous copies keep views and shared storage out of the file,
    and the metadata is fixed (transformers only reads `format`).
    """
    try:
        save_file({key: tensors[key].contiguous() for key in sorted(tensors)}, str(path), metadata={"format": "pt"})
    except SafetensorError as err:  # safetensors reports a failed write (a full disk) as its own error
        raise OSError(f"cannot write {path}: {err}") from None


def check_output_location(final: Path, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output directory that is, or holds, an input or the working directory.

    Paths are compared both as given (made absolute) and with symbolic links resolved, so a link to an input
    inside the output, or an output reached through a link, is seen too.
    """
    targets = {final.absolute(), final.resolve()}
    cwd = Path.cwd()
    for place in (cwd, cwd.resolve()):
        if any(place == target or target in place.parents for target in targets):
            raise CheckpointError(f"refusing to write {final}: it is the working directory or holds it")
    for path in map(Path, inputs):
        for candidate in (path.absolute(), path.resolve()):
            if any(candidate == target or target in candidate.parents for target in targets):
                raise CheckpointError(
                    f"refusing to write {final}: it holds the input {path}; choose an output directory outside it"
                )


@contextmanager
def output_lock(final: Path) -> Iterator[Path]:
    """Hold the exclusive lock of output `final` (`.NAME.lock` beside it); a held lock is a one-line error.

    The lock file is removed on release. A process that opened it just before it was removed would lock a file
    no longer in the directory, so after locking, the file at the path must be the one locked; else try again.
    """
    lock_path = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                f"another process (pid {holder}) is writing {final}; wait for it to finish or choose another output"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        lock_path.unlink(missing_ok=True)  # while still locked: nobody can be holding the new file
        os.close(fd)


def clear_leftovers(final: str | Path) -> None:
    """Remove what killed writers of `final` left beside it, under its lock (see `_remove_leftovers`)."""
    final = Path(final)
    with output_lock(final):
        _remove_leftovers(final)


def _remove_leftovers(final: Path) -> None:
    """Remove what killed writers of `final` left; called with the lock held, so none of them is alive."""
    prefixes = (f".{final.name}.partial-", f".{final.name}.old-")
    siblings = [path for path in final.parent.iterdir() if path.name.startswith(prefixes)]
    for path in sorted(siblings):
        if ".old-" in path.name and not os.path.lexists(final):  # killed between its two renames: put it back
            path.rename(final)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_replaceable(final: Path, replace: bool, marker: str) -> None:
    if not os.path.lexists(final):
        return
    if not replace:
        raise CheckpointError(f"{final} already exists; pass --force to replace it")
    if final.is_symlink() or not final.is_dir():
        raise CheckpointError(f"{final} exists and is not a directory; --force replaces only a directory")
    if any(final.iterdir()) and not (final / marker).is_file():
        raise CheckpointError(
            f"{final} is not empty and holds no {marker}: not a checkpoint directory, so --force will not delete it"
        )


@contextmanager
def atomic_directory(
    final: str | Path, *, replace: bool = False, inputs: Iterable[str | Path] = (), marker: str = MARKER
) -> Iterator[Path]:
    """An empty temporary sibling of `final` to write into, renamed to `final` when the block succeeds.

    final: the output directory.
    replace: an existing `final` that is empty or holds the file `marker` (a directory such a writer made) is
        replaced; any other existing `final` is an error.
    inputs: paths the writer reads; `final` may not be or hold one of them (nor the working directory).
    On any other exit from the block (an error, Ctrl-C) the temporary directory is removed and `final` is as it
    was. A second writer of the same `final` gets a one-line `CheckpointError` while this one
    runs. OSErrors inside the block or on the way become `CheckpointError`s naming `final`.
    """
    final = Path(final)
    check_output_location(final, inputs)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with output_lock(final):
            _remove_leftovers(final)
            _check_replaceable(final, replace, marker)
            tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
            tmp.mkdir()  # with the umask's permissions, which the final directory keeps (mkdtemp's would be 0700)
            try:
                yield tmp
                _rename_into_place(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a successful rename
    except OSError as err:
        raise CheckpointError(f"cannot write {final}: {os_error_message(err)}") from None


def _rename_into_place(tmp: Path, final: Path) -> None:
    """`tmp` becomes `final`; an existing `final` is moved aside first, so that a failure keeps one of the two.

    The files reach the disk before the rename (fsync), and the rename before this returns: after a power loss
    the name holds the old directory or the complete new one, not a renamed directory of short files.
    """
    _fsync_tree(tmp)
    if not os.path.lexists(final):
        tmp.rename(final)
    else:
        old = tmp.with_name(tmp.name.replace(".partial-", ".old-"))
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(root, name))
        _fsync(Path(root))


def os_error_message(err: OSError) -> str:
    """An OSError in one line: what failed, and on which path."""
    if err.strerror and err.filename is not None:
        return f"{err.strerror}: {os.fsdecode(err.filename)}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


__all__ = [
    "MARKER", "atomic_directory", "check_output_location", "os_error_message", "output_lock", "write_json",
    "write_safetensors",
]  # fmt: skip
