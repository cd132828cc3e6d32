"""Atomic, durable file writes: a reader sees the old file or the whole new one, never a mix.

Every file the library writes for others to read (metrics JSON, `.keras` models, indexes,
backups' `latest` marker, TensorBoard projector files, extracted dataset images, SavedModel
versions) goes through this module, so they all follow one recipe:

1. write to a new temporary file in the destination's folder (a rename is atomic only within one
   file system), created like `open()` creates a file: mode 0666 less the umask (0644 under the
   usual umask 022), not `mkstemp`'s 0600, since a server or TensorBoard may read it as another user;
2. fsync the file, so the rename cannot reach the disk before the data;
3. `os.replace` it over the destination;
4. fsync the folder, so the rename itself survives a crash.

On any error the temporary file is removed and the destination is untouched.
Imports no TensorFlow: the CLI uses it before TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

# fsync on a folder is refused by some file systems (e.g. some network mounts); the rename is still atomic.
_UNSYNCABLE = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES}


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """fsyncs the file or folder at `path` (any file descriptor syncs the inode on Linux)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError as error:
        if directory and error.errno in _UNSYNCABLE:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as error:
        if not (directory and error.errno in _UNSYNCABLE):
            raise
    finally:
        os.close(fd)


def _temporary_name(target: pathlib.Path, suffix: str) -> pathlib.Path:
    """A fresh hidden name next to `target`; the random part keeps concurrent writers apart."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp{suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = "", durable: bool = True) -> Iterator[pathlib.Path]:
    """Yields a new empty temporary file next to `path`; on a clean exit it atomically becomes `path`.

    For writers that need a file name (`model.save`, `np.savez`): the body writes the yielded path
    (which ends in `suffix`, e.g. ".keras" for Keras), then the file is fsynced, renamed over `path`
    and the folder fsynced. If the body raises, the temporary file is removed and `path` keeps its
    old content. The parent folder is created when missing. `durable=False` skips both fsyncs (the
    replacement stays atomic, not crash-proof): for many small files made durable at once by
    `sync_tree` before the file that lists them is written.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temporary_name(target, suffix)
        try:
            # O_EXCL: never reuse a name; 0o666: the umask applies, as for open(..., "w").
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        _fsync_path(target.parent, directory=True)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> pathlib.Path:
    """Replaces the file `path` by `data`, atomically and (unless `durable=False`, see `replacing`)
    durably; returns the path."""
    with replacing(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> pathlib.Path:
    """Replaces the file `path` by `text`, atomically and durably; returns the path."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, payload: Any, **dump_options: Any) -> pathlib.Path:
    """Replaces the file `path` by `json.dumps(payload, **dump_options)`, atomically; returns the path."""
    return write_text(path, json.dumps(payload, **dump_options))


def sync_tree(root: str | os.PathLike) -> None:
    """fsyncs every file and folder below `root` (and `root`): makes a folder written by a library
    (a SavedModel, a checkpoint) durable before something that points at it is renamed into place."""
    for folder, _, files in os.walk(os.fspath(root)):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_path(folder, directory=True)


@contextlib.contextmanager
def replacing_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temporary folder path next to `path` (not yet created); on a clean exit the folder the
    body wrote there is made durable and renamed to `path`, which must not exist (or be an empty folder).

    A reader polling the parent (e.g. TF Serving) sees no folder or the whole one. If the body raises,
    everything it wrote is removed.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(target, "")
    staging.mkdir(mode=0o777)
    try:
        yield staging / target.name
        sync_tree(staging / target.name)
        os.replace(staging / target.name, target)
        _fsync_path(target.parent, directory=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
