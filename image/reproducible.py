"""Reproducible images: the same inputs give the same image, byte for byte.

What would otherwise differ from one build to the next, and what fixes it:
- times: one SOURCE_DATE_EPOCH for the whole build (source_date_epoch). Files
  newer than it are set back to it (clamp_mtimes) before they go into a
  filesystem; filesystems' own times (ext4's superblock and inode change
  times, the squashfs's creation time, FAT's entries) are set to it; Python
  byte code made during the build is hash-checked, not time-checked (Python's
  py_compile does that itself when SOURCE_DATE_EPOCH is set), and useradd
  dates /etc/shadow with it;
- identifiers: the GPT's disk and partition UUIDs, the ext4 UUID and its
  directory hash seed and the ESP's volume id are derived from the build's
  inputs (Stamp.uuid), not drawn at random: two images of the same inputs
  share them, two images of different inputs do not;
- order: mke2fs, mksquashfs and mcopy read a directory in the order the build
  machine's filesystem returns it, which is the same for the same tree; the
  inputs' digest sorts everything it reads.

The cached root filesystems (image/rootfs.py) are inputs too: mmdebstrap
gets the same SOURCE_DATE_EPOCH, but two cold builds from a mirror that has
moved on in between are two different inputs.
"""

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from firstboot.commands import CommandFailed, run
from firstboot.errors import BadInput

REPO = Path(__file__).resolve().parent.parent
# For a checkout without git history (an unpacked tarball) and no
# SOURCE_DATE_EPOCH given: 2025-01-01T00:00:00Z, before any build of this code.
FALLBACK_EPOCH = 1735689600


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH if the caller sets it (reproducible-builds.org's
    convention), else the time of this checkout's commit, else FALLBACK_EPOCH."""
    given = os.environ.get("SOURCE_DATE_EPOCH")
    if given is not None:
        if not given.isdigit():
            raise BadInput(f"SOURCE_DATE_EPOCH (environment): {given!r} is not a number of seconds since 1970",
                           hint="unset it, or set it to e.g. $(git log -1 --format=%ct)")
        return int(given)
    try:
        result = run(["git", "-C", REPO, "log", "-1", "--format=%ct"], capture=True, check=False)
    except CommandFailed:       # no git on this machine
        return FALLBACK_EPOCH
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else FALLBACK_EPOCH


@dataclass(frozen=True)
class Stamp:
    """What makes one build's bytes its own: its time and its inputs' digest."""
    epoch: int
    inputs: str         # sha256 hex of the build's inputs (inputs_digest)

    def uuid(self, purpose: str) -> str:
        """A version-4-shaped UUID for purpose ("gpt-disk", "root-fs", ...),
        the same for the same inputs and different for different purposes."""
        digest = hashlib.sha256(f"{self.inputs}\0{purpose}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def volume_id(self, purpose: str) -> str:
        """A FAT volume id (8 hex digits) for purpose, as mkfs.vfat -i takes it."""
        return self.uuid(purpose).replace("-", "")[:8].upper()

    @property
    def env(self) -> dict[str, str]:
        """The environment that makes tools (pip, useradd, mmdebstrap) use the epoch."""
        return {"SOURCE_DATE_EPOCH": str(self.epoch)}


@contextlib.contextmanager
def epoch_in_environment(epoch: int):
    """SOURCE_DATE_EPOCH=epoch for the tools the build runs (firstboot.commands
    passes it on): pip's byte code, useradd's /etc/shadow dates, mtools and
    mksquashfs read it there, as they would from a caller who set it."""
    previous = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = previous


def inputs_digest(parts: dict[str, object]) -> str:
    """sha256 over named inputs: strings as they are, directories by their
    files' names, modes and contents (in name order), None as absent."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        digest.update(f"{name}\0".encode())
        if isinstance(value, Path):
            digest.update(tree_digest(value).encode())
        else:
            digest.update(repr(value).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def tree_digest(directory: Path) -> str:
    """Names, modes and contents of every file and link under directory (or
    the contents of directory if it is a file)."""
    if directory.is_file():
        return hashlib.sha256(directory.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(directory)
        if path.is_symlink():
            digest.update(f"{relative}\0link\0{os.readlink(path)}\0".encode())
        elif path.is_file():
            digest.update(f"{relative}\0{path.stat().st_mode & 0o7777:o}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def clamp_mtimes(tree: Path, epoch: int) -> int:
    """Every file, directory and link under tree (and tree) that is newer
    than epoch set to it, as tar --clamp-mtime does; older ones keep their
    time (Debian's byte code is checked against its sources' times). The
    number changed."""
    changed = 0
    for directory, names, files in os.walk(tree):
        for name in [*names, *files]:
            changed += _clamp(os.path.join(directory, name), epoch)
    return changed + _clamp(str(tree), epoch)


def _clamp(path: str, epoch: int) -> int:
    if os.lstat(path).st_mtime <= epoch:
        return 0
    os.utime(path, (epoch, epoch), follow_symlinks=False)
    return 1
