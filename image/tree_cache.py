"""The part of an image's trees that is the same for every rack, cached by its
inputs: a profile-only change reuses it and redoes only the racks' part.

    rootfs tarball (image/rootfs.py, cached by package set)
        -> unpack, the agent and its libraries, the k3s bundle, configuration
           = the OS tree (cached here, keyed by everything that went into it)
        -> + the racks' profiles, rendered files, bundles, units (every build)

An entry is the tree as its maker left it, copied out whole; a build gets a
copy (cp --reflink=auto: instant where the filesystem shares blocks, a plain
copy elsewhere), never the entry itself, so nothing a build does reaches the
cache. KEEP entries per kind are kept: the oldest goes when a new one is made.
"""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from image import atomic, progress, reproducible
from firstboot.commands import run

log = logging.getLogger("rackboot")
# Bump when what goes into an OS tree changes without its inputs changing.
CACHE_VERSION = 1
KEEP = 2            # entries per kind (each the size of a root filesystem)


def os_tree_inputs(rootfs_tarball: Path, arch: str, k3s_bundle) -> dict[str, object]:
    """What an OS tree is made of: the rootfs (its cache entry and that
    file's identity, which --no-cache rebuilds change), the agent and builder
    code, the libraries' pins, the k3s bundle, the build's epoch."""
    stat = rootfs_tarball.stat()
    return {"v": CACHE_VERSION, "arch": arch, "rootfs": (str(rootfs_tarball), stat.st_size, stat.st_mtime_ns),
            "agent": reproducible.REPO / "firstboot", "builder": reproducible.REPO / "image",
            "requirements": reproducible.REPO / "requirements.txt",
            "k3s": None if k3s_bundle is None else (k3s_bundle.version, sorted(k3s_bundle.files.items())),
            "epoch": reproducible.source_date_epoch()}


def copy_tree(source: Path, target: Path) -> None:
    """target (empty or new) gets source's contents: owners, modes, links, times."""
    target.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", f"{source}/.", target])


def prepared(cache_dir: Path | None, kind: str, inputs: dict[str, object], target: Path,
             make: Callable[[Path], None]) -> bool:
    """target (new) gets the OS tree make(target) makes: copied from the
    cache entry of these inputs if there is one (True), else made, and then
    kept as the cache's entry for kind (False). No cache_dir: made, not kept."""
    target.mkdir(parents=True, exist_ok=True)
    if cache_dir is None:
        make(target)
        return False
    key = reproducible.inputs_digest(inputs)[:16]
    entry = cache_dir / f"tree-{kind}-{key}"
    if (entry / "complete").exists():
        with progress.step(f"copy the cached {kind} tree"):
            copy_tree(entry / "tree", target)
        return True
    make(target)
    with progress.step(f"keep the {kind} tree in the cache"):
        with atomic.staged_directory(entry) as staging:
            copy_tree(target, staging / "tree")
            (staging / "complete").write_text(key + "\n")
    _prune(cache_dir, kind, entry)
    return False


def _prune(cache_dir: Path, kind: str, kept: Path) -> None:
    """Of kind's other entries, only the newest KEEP - 1 stay: builds that
    alternate between two sets of inputs (with and without a k3s bundle)
    reuse both."""
    others = sorted((p for p in cache_dir.glob(f"tree-{kind}-*") if p != kept and (p / "complete").exists()),
                    key=lambda p: (p / "complete").stat().st_mtime_ns, reverse=True)
    for old in others[KEEP - 1:]:
        log.info("  removing the older cached %s tree %s", kind, old.name)
        shutil.rmtree(old, ignore_errors=True)
