"""Opening the files a user names (inputs, kernel files, templates): regular files only, opened once
each time they are read, a .npy's header checked before a byte of its data.

A FIFO or a device (``ln -s /dev/zero x.png``) is refused in one line before a byte is read:
reading one could block for ever or never end, and it cannot be read a second time (the planner
reads a header, the runner the pixels). It is checked on the open file itself, so a file swapped
for a FIFO after the check still cannot hang the run.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Callable

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: temporaries are not locked, and a later run removes none
    fcntl = None

from .errors import InputError, shown


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """An open regular file, or an InputError naming it: no such file, a folder, not a regular file."""
    name = shown(os.fspath(path))
    try:
        _check_regular(os.stat(path).st_mode, name)  # a FIFO or a device is never opened (a tape would rewind)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        _check_regular(os.fstat(fd).st_mode, name)  # what was opened, if it was swapped since the stat
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    f = os.fdopen(fd, "rb")
    f.raw.name = os.fspath(path)  # as open(path) names it (tifffile looks for the folder beside it)
    return f


def _check_regular(mode: int, name: str) -> None:
    if stat.S_ISDIR(mode):
        raise InputError(f"{name}: is a directory")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a special file"
        raise InputError(f"{name}: not a regular file ({kind}); imfilt reads files, or - for standard input")


def read_at_most(stream: BinaryIO, limit: int) -> bytes | None:
    """All of a stream (standard input) if it ends within ``limit`` bytes, else None: a pipe that
    never ends (yes | imfilt apply - ...) is read no further. Read in pieces, so signals are heard."""
    pieces, size = [], 0
    while size <= limit:
        piece = stream.read(min(2**20, limit + 1 - size))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        size += len(piece)
    return None


def hold(fd: int) -> None:
    """Lock a temporary file or folder this process is writing (flock, exclusive, released when the
    descriptor closes, or the process dies): how another run knows it is still being written."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def take_abandoned(path) -> int | None:
    """An open descriptor of a temporary whose writer is gone (its lock could be taken), to be
    removed and then closed; None while a live process still holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def file_size(f: BinaryIO) -> int:
    """The size of an open file (or BytesIO), from where its end is."""
    position = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(position)
    return end


def npy_header(f: BinaryIO, check: Callable[[tuple[int, ...], np.dtype], None] = lambda shape, dtype: None,
               size: int | None = None) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of the .npy open at its start, leaving the file at its data;
    nothing is allocated for the data.

    ``check(shape, dtype)`` runs on the header first (a caller's own limits); then a ValueError
    for a file shorter than its header says (np.load would allocate the whole array first).
    ``size``: the file's size where seeking to its end would read it (a member of a zip archive).
    """
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version in readers:
        shape, fortran, dtype = readers[version](f)
    else:  # 3.0 (a UTF-8 header): numpy reads it with its own private reader
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001
    if dtype.hasobject:
        raise ValueError(f"holds Python objects ({dtype}), not numbers")
    shape = tuple(int(n) for n in shape)
    check(shape, dtype)
    needed = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    size = file_size(f) if size is None else size
    if size < needed:
        raise ValueError(f"its header says {needed} bytes, the file has {size}")
    return shape, dtype, fortran
