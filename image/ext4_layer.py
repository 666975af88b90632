"""The jumphost's ext4 root on a rebuild, from what the tree cache has
(image/tree_cache.py): the OS tree's own filesystem, made once per cache
entry and size and kept in the entry, copied into the image, and the
build's layer (the overlay's upper directory: exactly what the build added
or changed) written into it with debugfs. A profile-only rebuild then
writes its few hundred MB, not the whole 1.5 GB tree (mke2fs -d).

The result holds the same files, modes, owners, links and times as
mke2fs -d of the whole tree (tests/test_ext4_layer.py); it is laid out
otherwise, the same way for the same inputs. Its UUID is the image's
(the filesystem is made with metadata_csum_seed, so setting it rewrites
nothing else); its directories' hash seed is the cache entry's.

debugfs reads commands as text, so every name and link target that goes
into one must be plain (SAFE_NAME): anything else (a space, a quote, a
newline, a name debugfs would read as an inode number) is refused, and
so are what a layer can hold beyond new and changed files (whiteouts,
opaque directories, hard links, extended attributes, devices). Refused,
the root is made whole by mke2fs as before: slower, never different.
"""

import logging
import os
import re
import stat
import tempfile
from pathlib import Path, PurePosixPath

from firstboot.commands import run
from firstboot.errors import RackbootError
from image import disk, progress
from image.reproducible import Stamp
from image.tree_cache import Layers

log = logging.getLogger("rackboot")
# One argument of debugfs's command parser (libss: words split at blanks,
# '"' quotes) that string_to_inode reads as a name: no blank, quote, '<'
# (an inode number), '#', '/' (joined by this module) or control character,
# and no leading '-' (an option to a command that takes any).
SAFE_NAME = re.compile(r"[A-Za-z0-9._+,@=:%~\\][A-Za-z0-9._+,@=:%~\\-]*")
OVERLAY_XATTRS = "trusted.overlay."     # the upper layer's own bookkeeping, not the tree's
BANNER = re.compile(r"debugfs \S+ \(.*\)")


class CannotLayer(Exception):
    """The layer holds something debugfs cannot be given here."""


def plain(name: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise CannotLayer(f"{name!r} is not a name debugfs takes as a plain argument")
    return name


def plain_path(path: PurePosixPath | str, absolute: bool = True) -> str:
    """path with each part checked (plain); '/' for the root."""
    parts = [plain(part) for part in PurePosixPath(path).parts if part != "/"]
    return ("/" if absolute else "") + "/".join(parts)


def plain_target(link: str) -> str:
    """A link's target as it is (not normalised: './x' stays './x'), each
    part checked (plain)."""
    for part in link.split("/"):
        if part:
            plain(part)
    if not link:
        raise CannotLayer("a link to nothing")
    return link


def _attributes(target: str, info: os.stat_result, epoch: int) -> list[str]:
    """The inode's mode, owner and modification time as the tree has them;
    access, change and creation times the epoch (as disk.settle_inode_times)."""
    return [f"sif {target} {field} {value}" for field, value in (
        ("mode", f"0{info.st_mode:o}"), ("uid", info.st_uid), ("gid", info.st_gid),
        ("mtime", f"@{int(info.st_mtime)}"), ("atime", f"@{epoch}"), ("ctime", f"@{epoch}"),
        ("crtime", f"@{epoch}"))]


def _check_entry(path: Path, info: os.stat_result) -> None:
    kinds = (stat.S_ISDIR, stat.S_ISREG, stat.S_ISLNK)
    if not any(kind(info.st_mode) for kind in kinds):
        raise CannotLayer(f"{path}: a whiteout, device, pipe or socket")
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise CannotLayer(f"{path}: a hard link")
    extra = [name for name in os.listxattr(path, follow_symlinks=False) if not name.startswith(OVERLAY_XATTRS)]
    if extra:
        raise CannotLayer(f"{path}: extended attributes {', '.join(extra)}")
    marked = [name for name in ("opaque", "redirect", "metacopy")
              if OVERLAY_XATTRS + name in os.listxattr(path, follow_symlinks=False)]
    if marked:      # a directory that hides the cached tree's, one moved, a file whose data is below
        raise CannotLayer(f"{path}: overlayfs marks it {', '.join(marked)}")


def layer_commands(upper: Path, lower: Path, epoch: int) -> list[str]:
    """debugfs's commands that turn lower's filesystem into that of lower
    with upper laid over it; host files named relative to upper (run them
    there). Children before their directory's attributes: adding an entry
    changes a directory's times. Raises CannotLayer before any is run."""
    commands: list[str] = []
    _directory(upper, lower, PurePosixPath("/"), epoch, commands)
    commands += _attributes("/", os.lstat(upper), epoch)
    return commands


def _directory(upper: Path, lower: Path, inside: PurePosixPath, epoch: int, commands: list[str]) -> None:
    for name in sorted(os.listdir(upper)):
        path, below, target = upper / name, lower / name, plain_path(inside / name)
        info = os.lstat(path)
        _check_entry(path, info)
        if os.path.lexists(below) and stat.S_ISDIR(os.lstat(below).st_mode) != stat.S_ISDIR(info.st_mode):
            raise CannotLayer(f"{target}: a directory in one layer and not in the other")
        if stat.S_ISDIR(info.st_mode):
            if not os.path.lexists(below):
                commands.append(f"mkdir {target}")
            _directory(path, below, inside / name, epoch, commands)
        else:
            if os.path.lexists(below):
                commands.append(f"rm {target}")
            commands.append(f"cd {plain_path(inside)}")
            if stat.S_ISLNK(info.st_mode):
                link = os.readlink(path)
                commands.append(f"symlink {plain(name)} {plain_target(link)}")
            else:
                commands.append(f"write {plain_path(inside / name, absolute=False)} {plain(name)}")
            commands.append("cd /")
        commands += _attributes(target, info, epoch)


def base_filesystem(layers: Layers, label: str, size_mb: int, stamp: Stamp) -> Path:
    """The cache entry's tree as an ext4 of size_mb, made once and kept in
    the entry (removed with it; about as large as the tree). One size is
    kept: the root's size moves in 64 MiB steps, seldom on a profile change."""
    base = layers.entry / f"root-{plain(label)}-{size_mb}M.ext4"
    if base.exists():
        log.info("  reusing the cached tree's filesystem %s", base.name)
        return base
    with progress.step(f"the cached tree's {size_mb} MiB ext4 filesystem (once per cache entry)"):
        fd, staging = tempfile.mkstemp(prefix=f".{base.name}.", dir=layers.entry)
        os.close(fd)
        os.unlink(staging)
        entry_stamp = Stamp(stamp.epoch, layers.entry.name)    # the entry's key: its inputs
        disk.make_ext4(layers.lower, Path(staging), label, entry_stamp, size_mb=size_mb,
                       features=("metadata_csum_seed",))
        os.replace(staging, base)
    for other in layers.entry.glob(f"root-{label}-*M.ext4"):     # a size the racks no longer need
        if other != base:
            other.unlink(missing_ok=True)
    return base


def apply(commands: list[str], filesystem: str, upper: Path, stamp: Stamp, label: str) -> None:
    """Run commands on filesystem (from upper, where their host files are)
    and give it the image's UUID; any error debugfs reports fails the build."""
    script = "\n".join([*commands, f"ssv uuid {stamp.uuid(f'ext4:{label}')}", ""])
    result = run(["debugfs", "-w", "-f", "-", filesystem], capture=True, input=script, cwd=upper,
                 env={"E2FSPROGS_FAKE_TIME": str(stamp.epoch)})
    errors = [line for line in result.stderr.splitlines() if line.strip() and not BANNER.fullmatch(line.strip())]
    if errors:
        raise RackbootError(f"debugfs could not lay the build's files over the cached root filesystem: "
                            f"{'; '.join(errors[:5])}", hint="rebuild with --no-cache, and report this")


def clamp_layer(tree: Path, upper: Path, epoch: int) -> None:
    """disk.clamp_mtimes for what the build wrote (the layer's entries, set
    through tree): the cached tree's own were clamped when it was made. A
    whiteout's name is not in tree (layer_commands refuses it)."""
    for directory, names, files in os.walk(upper):
        for name in ["", *names, *files]:
            path = tree / os.path.relpath(os.path.join(directory, name), upper)
            if os.path.lexists(path) and os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)


def root_maker(layers: Layers | None):
    """disk.make_ext4's stand-in for disk.assemble: the cached tree's
    filesystem with layers.upper written into it where it can be, else
    make_ext4 itself."""
    def make_root(tree: Path, target: Path, label: str, stamp: Stamp, offset: int, size_mb: int) -> None:
        try:
            if layers is None or layers.upper is None:
                raise CannotLayer("the tree is not a cached one under a layer of the build's own")
            clamp_layer(tree, layers.upper, stamp.epoch)
            commands = layer_commands(layers.upper, layers.lower, stamp.epoch)
        except CannotLayer as why:
            log.info("  the whole root filesystem made anew: %s", why)
            disk.make_ext4(tree, target, label, stamp, offset=offset, size_mb=size_mb)
            return
        base = base_filesystem(layers, label, size_mb, stamp)
        with progress.step(f"the {size_mb} MiB ext4 root: the cached tree's, and the build's "
                           f"{len(commands)} changes by debugfs"):
            disk.copy_into(base, target, offset)
            apply(commands, disk.filesystem_at(target, offset), layers.upper, stamp, label)
    return make_root
