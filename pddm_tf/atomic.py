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

Folders that several processes could write at once (a TF Serving base folder, a backup folder) are
locked with `folder_lock`: an advisory `flock` on a `.<folder>.pddm_tf.lock` file beside it, which the
kernel releases when its process ends however it ends (kill -9 included), so a dead run's lock is
taken over by the next one; a live one's is refused with a `FolderInUseError` naming its process
(pid, host, purpose, start time). `replacing_version` writes a SavedModel version under that lock,
after removing the staging folders a killed export left behind.
Imports no TensorFlow: the CLI uses it before TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, see folder_lock
    fcntl = None  # type: ignore[assignment]

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


_TOKEN_BYTES = 6


def _temporary_name(target: pathlib.Path, suffix: str) -> pathlib.Path:
    """A fresh hidden name next to `target`; the random part keeps concurrent writers apart."""
    return target.with_name(f".{target.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp{suffix}")


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


#: The suffix of the lock file `folder_lock` creates beside a locked folder (".<folder name>.pddm_tf.lock")
#: while it holds the lock: beside, not inside, so that locking neither creates the folder nor shows in it.
LOCK_SUFFIX = ".pddm_tf.lock"
# Locks this process holds: lock file path -> [open descriptor, depth]. flock belongs to an open file
# description, so a second open() of the same file in this process would wait on itself.
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()
# A staging folder of `replacing_version`: ".<version>.<12 hex digits>.tmp".
_VERSION_STAGING = re.compile(rf"\.\d+\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")


class FolderInUseError(OSError):
    """Another live process holds the folder's `folder_lock` (the message names it)."""


def _lock_key(folder: pathlib.Path) -> str:
    """The lock file of `folder`: ".<name>.pddm_tf.lock" in its parent (the folder's real path)."""
    real = pathlib.Path(os.path.realpath(folder))
    return str(real.parent / f".{real.name}{LOCK_SUFFIX}")


def held_by_this_process(folder: str | os.PathLike) -> bool:
    """Whether this process holds `folder`'s `folder_lock`."""
    with _HELD_GUARD:
        return _lock_key(pathlib.Path(folder)) in _HELD


def _holder(fd: int) -> str:
    """Who holds a lock, as its holder wrote it into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return (f"process {info['pid']} on {info['host']} ({info['purpose']}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))})")
    except (OSError, ValueError, KeyError, TypeError):  # written at this very moment, or not by us
        return "another process"


def _acquire(root: pathlib.Path, key: str) -> int:
    """An open descriptor of the lock file `key`, flocked by this process."""
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            named = os.stat(key)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{root} is in use by {holder}: two runs must not write into one "
                                   "folder; wait for that one to end, or choose another folder") from None
        except FileNotFoundError:  # its holder removed it as we locked it: lock the next one
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        opened = os.fstat(fd)
        if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)  # replaced since we opened it: lock the file now named so


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, purpose: str) -> Iterator[pathlib.Path]:
    """Holds an exclusive lock on `folder` for the block; yields the lock file.

    Re-entrant within a process. The lock is an advisory `flock` on `.<folder>.pddm_tf.lock` beside
    the folder (whose parent is created when missing; the folder itself is not), holding
    the holder's pid, host, `purpose` and start time, and removed on release: it binds only writers
    that take it (every writer of this library into an export or backup folder does). The kernel
    releases it when the holder dies, so a killed run's lock (the file stays) is taken over. `flock`
    works across hosts on NFSv4 and most cluster file systems, not on every network mount. On Windows
    (no `flock`) nothing is locked.

    Raises:
      FolderInUseError: another live process holds the lock (an OSError, so the CLI says it in one line).
    """
    root = pathlib.Path(folder)
    key = _lock_key(root)
    pathlib.Path(key).parent.mkdir(parents=True, exist_ok=True)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            fd = _acquire(root, key)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                                      "since": time.time()}).encode(), 0)
            _HELD[key] = [fd, 1]
    try:
        yield pathlib.Path(key)
    finally:
        with _HELD_GUARD:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                fd = _HELD.pop(key)[0]
                # Removed while still locked, so that a waiting process finds no file to lock but its own
                # (`_acquire` checks that the file it locked is still the one of that name).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(key)
                os.close(fd)  # releases the flock


@contextlib.contextmanager
def replacing_version(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """`replacing_directory(path)` under `folder_lock` of its parent (a TF Serving base folder), after
    removing the staging folders of earlier, killed writers there.

    Only folders named as `replacing_directory` names a version's staging (".<digits>.<12 hex
    digits>.tmp") are removed; every writer of versions holds the lock while its staging folder
    exists, so with the lock held such a folder has no live writer.

    Raises:
      FolderInUseError: another process is writing into the parent folder.
    """
    target = pathlib.Path(path)
    with folder_lock(target.parent, f"writing {target.name}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        for entry in target.parent.iterdir():
            if _VERSION_STAGING.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
        with replacing_directory(target) as staging:
            yield staging


@contextlib.contextmanager
def lock_folders(*folders: str | os.PathLike | None, purpose: str = "a pddm_tf training run") -> Iterator[None]:
    """Holds `folder_lock` on every folder given (None: skipped; each folder once) for the block: what
    `pddm_tf.training.train` holds on its backup and export folders for the whole run.

    Raises:
      FolderInUseError: another live process holds one of them (the message names it: pid, host).
    """
    with contextlib.ExitStack() as stack:
        for folder in dict.fromkeys(os.path.realpath(f) for f in folders if f):
            stack.enter_context(folder_lock(folder, purpose))
        yield
