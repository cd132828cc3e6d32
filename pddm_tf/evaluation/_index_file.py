"""Reading an `Index` file (`.npz`) with every declared size checked before a byte is decompressed.

`np.load` trusts the file: a 1.5 MB archive whose member inflates to 1.5 GB is decompressed whole,
and a header that declares 200M x 64 floats is allocated before anything is read. `read_arrays`
reads the zip directory and each member's `.npy` header first (a few hundred bytes each), and
refuses the file unless every declared array

* has a plain numeric or string dtype (no pickled objects, no complex numbers where reals belong),
* is as large as the zip directory says the member is (so the reader stops where the header says),
* adds up with the others to at most `max_bytes` (a stated cap, `MAX_INDEX_BYTES` by default) and to
  at most `MAX_INFLATION` times the file's size (a compressed member cannot expand past that).

Only then are the arrays read, each bounded by its checked size. A truncated, empty or random file,
a `.npy` file, or a missing member is one ValueError naming the file and the problem.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from typing import cast

import numpy as np

#: Default cap on the bytes an index file may declare in total (arrays once read): 8 GiB, e.g. 16M x 128
#: float32 embeddings. `Index.load(..., max_bytes=...)` raises it for a larger index.
MAX_INDEX_BYTES = 8 << 30
#: Declared bytes per byte of file at most: `Index.save` stores arrays uncompressed (1x); float embeddings
#: compress to no less than ~1/3 of their size, labels further, so 64x leaves room for any honest file.
MAX_INFLATION = 64
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def read_arrays(path: str | os.PathLike, kinds: Mapping[str, str], required: tuple[str, ...],
                max_bytes: int = MAX_INDEX_BYTES) -> dict[str, np.ndarray]:
    """The arrays named in `kinds` (name -> numpy dtype kinds allowed, e.g. "f" or "iuU") from an `.npz`.

    Members not named in `kinds` are ignored (not read); `required` ones must be there.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not an index file (empty, truncated, random bytes, a `.npy`), a required array
        missing, a dtype not allowed, or declared sizes beyond the caps (see the module docstring).
    """
    name = os.fspath(path)
    size = os.path.getsize(name)
    if size == 0:
        raise ValueError(f"{name} is empty (0 bytes), not an index file")
    with open(name, "rb") as f:
        start = f.read(len(_NPY_MAGIC))
    if start == _NPY_MAGIC:
        raise ValueError(f"{name} is a single .npy array, not an index file (.npz written by Index.save)")
    try:
        archive = zipfile.ZipFile(name)
    except zipfile.BadZipFile:
        what = "truncated or corrupt .npz archive" if start.startswith(_ZIP_MAGIC) else "not a .npz archive"
        raise ValueError(f"{name} is not an index file: {what}") from None
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        missing = [key for key in required if key not in members]
        if missing:
            raise ValueError(f"{name} is not an index file: no {', '.join(repr(k) for k in missing)} array "
                             f"(it holds {sorted(members) or 'no arrays'})")
        wanted = {key: info for key, info in members.items() if key in kinds}
        headers = {key: _header(archive, info, kinds[key], name) for key, info in wanted.items()}
        declared = sum(nbytes for _, _, _, nbytes in headers.values())
        cap = min(int(max_bytes), MAX_INFLATION * size)
        if declared > cap:
            shapes = ", ".join(f"{k} {shape} {dtype}" for k, (shape, _, dtype, _) in headers.items())
            raise ValueError(f"{name} declares {declared:,} bytes of arrays ({shapes}) in a {size:,}-byte file; "
                             f"the limit is {cap:,} (max_bytes={int(max_bytes):,}, {MAX_INFLATION}x the file size)")
        return {key: _read(archive, wanted[key], headers[key], name) for key in wanted}


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, kinds: str, name: str
            ) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data bytes) of one member, from its `.npy` header only."""
    key = info.filename[:-4]
    try:
        with archive.open(info) as f:
            shape, fortran, dtype = _read_header(f)
            header_bytes = f.tell() if f.seekable() else None
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{name}: the {key!r} array's header is unreadable ({error})") from None
    if dtype.hasobject:
        raise ValueError(f"{name}: the {key!r} array holds Python objects (pickled data), which an index never "
                         "saves; refused")
    if dtype.kind not in kinds:
        raise ValueError(f"{name}: the {key!r} array has dtype {dtype} ({_KIND_NAMES.get(dtype.kind, dtype.kind)}); "
                         f"expected {' or '.join(_KIND_NAMES[k] for k in kinds)}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if header_bytes is not None and info.file_size != header_bytes + nbytes:
        raise ValueError(f"{name}: the {key!r} array declares {shape} {dtype} ({nbytes:,} bytes) but its member "
                         f"holds {info.file_size - header_bytes:,}: a corrupt or forged file")
    return tuple(shape), fortran, dtype, nbytes


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the `.npy` stream `f`, positioned at its data after."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


_KIND_NAMES = {"f": "real floats", "i": "integers", "u": "unsigned integers", "U": "strings", "S": "bytes",
               "b": "booleans", "c": "complex numbers", "O": "objects", "V": "raw records", "M": "dates",
               "m": "time spans"}


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: tuple, name: str) -> np.ndarray:
    """The member's data, exactly the checked number of bytes (zipfile also checks its CRC)."""
    shape, fortran, dtype, nbytes = header
    key = info.filename[:-4]
    try:
        with archive.open(info) as f:
            _read_header(f)
            buffer = np.empty(nbytes, np.uint8)
            got = cast(io.BufferedIOBase, f).readinto(buffer.data)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{name}: the {key!r} array is truncated or corrupt ({error})") from None
    if got != nbytes:
        raise ValueError(f"{name}: the {key!r} array is truncated ({got:,} of {nbytes:,} bytes)")
    array = buffer.view(dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
