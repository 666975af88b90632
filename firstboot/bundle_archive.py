"""A rack bundle as one tar archive, both ways: packed by `build.py push`
(image/push.py) and by the jumphost's join service for its Pis
(firstboot/join.py), unpacked by `firstboot bundle install` on the jumphost
and by a Pi fetching its rack's bundle (firstboot/pi_bundle.py).

Packed: regular files, directories and the TFTP tree's links, owners root,
times 0, sorted: the same bundle gives the same bytes.

Unpacked: whoever sent the archive may be hostile (a Pi takes it from the
rack network). Only files, directories and links with plain relative names
are written, into an empty staging directory, never through a link nor
twice to one name, with no setuid or group/world-writable modes; what the
links point to and everything else is bundle.verify's to refuse.
"""

import io
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from firstboot import bundle

MAX_ARCHIVE = 512 << 20       # a 300-Pi rack's bundle is a few MiB


def pack(directory: Path) -> bytes:
    """directory as a tar (its entries under the bundle's own paths)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [directory, *sorted(directory.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return out.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise bundle.BundleInvalid(f"the archive holds {name!r}: not a plain relative path")
    return path


def _place(staging: Path, name: str) -> Path:
    """Where member name goes: under staging, through no link, not there yet
    (a link first and a file through it, or twice one name, would write
    outside staging)."""
    target = staging / _safe_name(name)
    for parent in [*reversed(target.relative_to(staging).parents)][1:]:
        if (staging / parent).is_symlink():
            raise bundle.BundleInvalid(f"the archive holds {name!r}, under a link")
    if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
        raise bundle.BundleInvalid(f"the archive holds {name!r} twice")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    if member.isdir():
        target.mkdir(exist_ok=True)
        target.chmod(member.mode & 0o755)
    elif member.issym():
        target.symlink_to(member.linkname)     # bundle.verify allows only the TFTP tree's
    elif member.isreg():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     member.mode & 0o755)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(tar.extractfile(member), out)
    else:
        raise bundle.BundleInvalid(f"the archive holds {member.name!r}, neither a file, a directory nor a link")


def unpack(data: bytes, staging: Path) -> None:
    """The archive's files, directories and links into staging (empty)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name not in (".", "./"):
                    _write_member(tar, member, _place(staging, member.name))
    except (tarfile.TarError, EOFError) as err:
        raise bundle.BundleInvalid(f"not a bundle archive: {err}") from None
    staging.chmod(0o755)
