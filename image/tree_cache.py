"""The part of an image's trees that is the same for every rack, cached by its
inputs: a profile-only change reuses it and redoes only the racks' part.

    rootfs tarball (image/rootfs.py, cached by package set)
        -> unpack, the agent and its libraries, the k3s bundle, configuration
           = the OS tree (cached here, keyed by everything that went into it)
        -> + the racks' profiles, rendered files, bundles, units (every build)

An entry is the tree as its maker left it (its times clamped). A build sees
it through an overlay mount whose upper layer is the build's own: no copy,
and nothing the build writes reaches the entry (prepared). KEEP entries per
kind are kept: the oldest goes when a new one is made.
"""

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image import atomic, progress, reproducible
from firstboot.commands import run

log = logging.getLogger("rackboot")
# Bump when what goes into an OS tree changes without its inputs changing.
CACHE_VERSION = 1
KEEP = 2            # entries per kind (each the size of a root filesystem)


def os_tree_inputs(rootfs_tarball: Path, arch: str, k3s_bundles: tuple) -> dict[str, object]:
    """What an OS tree is made of: the rootfs (its cache entry and that
    file's identity, which --no-cache rebuilds change), the agent and builder
    code, the libraries' pins, the k3s bundles, the build's epoch."""
    stat = rootfs_tarball.stat()
    return {"v": CACHE_VERSION, "arch": arch, "rootfs": (str(rootfs_tarball), stat.st_size, stat.st_mtime_ns),
            "agent": reproducible.REPO / "firstboot", "builder": reproducible.REPO / "image",
            "requirements": reproducible.REPO / "requirements.txt",
            "k3s": [(bundle.version, sorted(bundle.files.items())) for bundle in k3s_bundles],
            "epoch": reproducible.source_date_epoch()}


def copy_tree(source: Path, target: Path) -> None:
    """target (empty or new) gets source's contents: owners, modes, links, times."""
    target.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", f"{source}/.", target])


@dataclass(frozen=True)
class Layers:
    """Where a prepared tree's parts are: the cache entry, its tree (the
    lower layer) and the build's own upper layer, which holds exactly what
    the build changed; upper is None where the tree is a copy."""
    entry: Path
    lower: Path
    upper: Path | None


@contextlib.contextmanager
def prepared(cache_dir: Path | None, kind: str, inputs: dict[str, object], target: Path,
             make: Callable[[Path], None]) -> Iterator[bool]:
    """target (an empty directory) shows the OS tree make(directory) makes
    while the block runs: the cache entry of these inputs (made first if
    there is none), under a layer of the build's own that takes its writes
    (overlayfs), so nothing a build does reaches the cache; a copy where
    overlayfs is not to be had. Yields whether the entry was there already.
    No cache_dir: an entry of the build's own, removed afterwards. Either
    way the build sees the tree the same way, so the image's bytes do not
    depend on whether the cache had it."""
    with prepared_layers(cache_dir, kind, inputs, target, make) as (hit, _):
        yield hit


@contextlib.contextmanager
def prepared_layers(cache_dir: Path | None, kind: str, inputs: dict[str, object], target: Path,
                    make: Callable[[Path], None]) -> Iterator[tuple[bool, Layers | None]]:
    """prepared(), yielding also the Layers of a cached entry (None for an
    entry of the build's own), for builders that reuse what the cache has
    made of the entry (image/ext4_layer.py)."""
    target.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            entry, hit = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=target.parent))), False
            _fill_entry(entry, make, inputs)
        else:
            entry, hit = _entry(cache_dir, kind, inputs, make)
        upper = stack.enter_context(_layered(entry / "tree", target))
        yield hit, Layers(entry, entry / "tree", upper) if cache_dir is not None else None


def _entry(cache_dir: Path, kind: str, inputs: dict[str, object], make: Callable[[Path], None]) -> tuple[Path, bool]:
    key = reproducible.inputs_digest(inputs)[:16]
    entry = cache_dir / f"tree-{kind}-{key}"
    if (entry / "complete").exists():
        log.info("  reusing the cached %s tree %s", kind, entry.name)
        return entry, True
    with atomic.staged_directory(entry) as staging:
        _fill_entry(staging, make, inputs)
        (staging / "complete").write_text(key + "\n")
    _prune(cache_dir, kind, entry)
    return entry, False


def _fill_entry(entry: Path, make: Callable[[Path], None], inputs: dict[str, object]) -> None:
    """entry/tree as make makes it, its times clamped now (image/reproducible.py),
    so that no build has to change a file of it."""
    (entry / "tree").mkdir()
    make(entry / "tree")
    reproducible.clamp_mtimes(entry / "tree", int(inputs["epoch"]))


@contextlib.contextmanager
def _layered(lower: Path, target: Path) -> Iterator[Path | None]:
    layer = Path(tempfile.mkdtemp(prefix=f".{target.name}.layer.", dir=target.parent))
    try:
        if _mount_overlay(lower, layer, target):
            try:
                yield layer / "upper"
            finally:
                run(["umount", target])
        else:
            with progress.step("copy the tree (no overlayfs here)"):
                copy_tree(lower, target)
            yield None
    finally:
        shutil.rmtree(layer, ignore_errors=True)


def _mount_overlay(lower: Path, layer: Path, target: Path) -> bool:
    """target: lower read-only under an upper directory in layer. False
    where it cannot be mounted (not root, no overlayfs) or the paths hold
    what separates mount options."""
    upper, work = layer / "upper", layer / "work"
    if any(c in str(path) for path in (lower, upper, work) for c in ",:\\"):
        return False
    upper.mkdir()
    work.mkdir()
    top = lower.stat()      # the merged root's owner, mode and time are the upper directory's
    os.chown(upper, top.st_uid, top.st_gid)
    os.chmod(upper, stat.S_IMODE(top.st_mode))
    os.utime(upper, ns=(top.st_atime_ns, top.st_mtime_ns))
    mounted = run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                   target], capture=True, check=False)
    if mounted.returncode != 0:
        log.info("  no overlayfs (%s): copying the tree instead", mounted.stderr.strip())
    return mounted.returncode == 0
def _prune(cache_dir: Path, kind: str, kept: Path) -> None:
    """Of kind's other entries, only the newest KEEP - 1 stay: builds that
    alternate between two sets of inputs (with and without a k3s bundle)
    reuse both."""
    others = sorted((p for p in cache_dir.glob(f"tree-{kind}-*") if p != kept and (p / "complete").exists()),
                    key=lambda p: (p / "complete").stat().st_mtime_ns, reverse=True)
    for old in others[KEEP - 1:]:
        log.info("  removing the older cached %s tree %s", kind, old.name)
        shutil.rmtree(old, ignore_errors=True)
