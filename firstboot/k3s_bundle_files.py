"""The files of a k3s air-gap bundle and how each is checked, one way on the
build host (image/k3s_bundle.py verifies a bundle before it goes into an
image) and on the machines (firstboot/k3s.py checks the image's copy before
it installs it), so that what one of them takes the other takes too.

    VERSION/k3s, k3s-arm64                     the binaries (binary_name)
    VERSION/k3s-airgap-images-ARCH.tar.zst     the images k3s deploys itself (images_name)
    VERSION/sha256sum-ARCH.txt                 k3s's own checksum files (checksums_name)

Every file is read as a regular file, never through a symbolic link (a link
would pull whatever it points at into the image or onto the machine), and
checked against its architecture's checksum file (firstboot/checksums.py).
A problem is a BundleFileError naming the file; its `problem` says what
kind, so that each side words its hint (fetch the bundle again; rebuild or
reflash the image).
"""

import enum
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from firstboot import checksums, files

ARCHES = ("amd64", "arm64")
VERSION_RE = re.compile(r"v\d+\.\d+\.\d+(-rc\d+)?\+k3s\d+")
CHUNK = 1 << 20


def binary_name(arch: str) -> str:
    return "k3s" if arch == "amd64" else f"k3s-{arch}"


def images_name(arch: str) -> str:
    return f"k3s-airgap-images-{arch}.tar.zst"


def checksums_name(arch: str) -> str:
    return f"sha256sum-{arch}.txt"


def arch_files(arch: str) -> tuple[str, str, str]:
    """Every file of arch in a bundle: binary, images, checksum file."""
    return binary_name(arch), images_name(arch), checksums_name(arch)


class Problem(enum.Enum):
    MISSING = "missing"
    NOT_REGULAR = "not a regular file"
    UNREADABLE = "unreadable"
    DAMAGED = "a damaged checksum file"      # too large, or not in sha256sum's format
    UNLISTED = "not listed in the checksum file"
    MISMATCH = "checksum mismatch"


class BundleFileError(Exception):
    """A bundle's file that is not as its checksum file says; the message
    starts with the file's path."""

    def __init__(self, path: Path, problem: Problem, message: str):
        super().__init__(message)
        self.path, self.problem = path, problem


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at path (not through a link), at most limit."""
    try:
        return files.read_regular(path, limit, follow_symlinks=False)
    except files.NotRegularFile as err:
        raise BundleFileError(path, Problem.NOT_REGULAR, f"{path}: {err.kind}, not a regular file") from None
    except files.TooLarge:
        raise BundleFileError(path, Problem.DAMAGED, f"{path}: larger than {limit} bytes") from None
    except FileNotFoundError:
        raise BundleFileError(path, Problem.MISSING, f"{path}: missing") from None
    except OSError as err:
        raise BundleFileError(path, Problem.UNREADABLE, f"{path}: cannot read it ({err.strerror})") from None


@dataclass(frozen=True)
class ChecksumFile:
    path: Path
    data: bytes                  # as read: pinned and hashed as is (image/k3s_pins.py)
    sums: dict[str, str]         # file name -> sha256


def read_checksums(bundle_dir: Path, arch: str) -> ChecksumFile:
    """arch's checksum file of the bundle, strictly parsed."""
    path = bundle_dir / checksums_name(arch)
    return parse_checksums(path, read_regular(path, checksums.MAX_BYTES))


def parse_checksums(path: Path, data: bytes) -> ChecksumFile:
    """The checksum file at path, read as data (the build host checks the
    bytes against its pins first: a pinned file is refused as unpinned, not
    as malformed)."""
    try:
        return ChecksumFile(path, data, checksums.parse(data, str(path)))
    except checksums.ChecksumFileError as err:
        raise BundleFileError(path, Problem.DAMAGED, str(err)) from None


def check_file(path: Path, listed: ChecksumFile) -> str:
    """path's sha256, which must be the one listed for its name; path must be
    a regular file (a link is refused, not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleFileError(path, Problem.MISSING, f"{path}: missing") from None
    except OSError as err:
        raise BundleFileError(path, Problem.UNREADABLE, f"{path}: cannot look at it ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise BundleFileError(path, Problem.NOT_REGULAR, f"{path}: {files.kind(mode)}, not a regular file")
    if path.name not in listed.sums:
        raise BundleFileError(path, Problem.UNLISTED, f"{path}: not listed in {listed.path.name}")
    try:
        got = sha256_file(path)
    except OSError as err:
        problem = Problem.NOT_REGULAR if err.errno == errno.ELOOP else Problem.UNREADABLE
        raise BundleFileError(path, problem, f"{path}: cannot read it ({err.strerror})") from None
    expected = listed.sums[path.name]
    if got != expected:
        raise BundleFileError(path, Problem.MISMATCH,
                              f"{path}: checksum mismatch (expected {expected}, got {got})")
    return got


def sha256_file(path: Path) -> str:
    """sha256 of the file at path; OSError for a link (ELOOP), never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as data:
        for chunk in iter(lambda: data.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_arch(bundle_dir: Path, arch: str) -> tuple[ChecksumFile, dict[str, str]]:
    """arch's checksum file, and the sha256 of its binary and images, each
    checked against it: what the agent installs from an image's bundle."""
    listed = read_checksums(bundle_dir, arch)
    return listed, {name: check_file(bundle_dir / name, listed) for name in (binary_name(arch), images_name(arch))}
