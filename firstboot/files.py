"""Reading a small input file that may not be what it claims: a profile, a
checksum file, a key file, a file:// secret.

Whatever names the path (a profile, a bundle on a USB stick, a reference)
may name a FIFO, which would block the reader forever, a device with no end
(/dev/zero) or side effects, a directory, or a huge file. So the path is
stat'ed first and anything but a regular file is refused without being
opened; the descriptor is checked again after opening (O_NONBLOCK: even a
FIFO swapped in since cannot block), and at most limit bytes are read.

Each caller turns the two refusals into its own error, in its own words.
"""

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind(mode: int) -> str:
    """What a file of this mode is, in words ("a FIFO")."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a file"


class NotRegularFile(Exception):
    def __init__(self, path: Path | str, kind: str):
        super().__init__(f"{path}: {kind}, not a regular file")
        self.path, self.kind = path, kind


class TooLarge(Exception):
    def __init__(self, path: Path | str, limit: int, size: int | None):
        super().__init__(f"{path}: larger than {limit} bytes")
        self.path, self.limit = path, limit
        self.size = size       # from stat; None when the file grew past limit while being read


def read_regular(path: Path | str, limit: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file at path, at most limit of them.

    Raises NotRegularFile, TooLarge, or OSError (missing, unreadable).
    follow_symlinks=False refuses a symbolic link itself (a bundle's files
    must be what was verified, not whatever a link points at)."""
    info = os.stat(path, follow_symlinks=follow_symlinks)
    _check(path, info, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        _check(path, os.fstat(fd), limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise TooLarge(path, limit, None)
    return b"".join(chunks)


def _check(path: Path | str, info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(path, kind(info.st_mode))
    if info.st_size > limit:
        raise TooLarge(path, limit, info.st_size)
