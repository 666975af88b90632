"""python -m firstboot bundle {install,rollback,list}: a pushed rack bundle
put in place on the jumphost (build.py push runs these over ssh, as root).

install FILE     FILE is a tar of one bundle (image/push.py packs it). It is
                 read once into memory (bounded), unpacked into a root-owned
                 staging directory beside the bundles (only files,
                 directories and links, plain relative names), and verified
                 there (firstboot/bundle.py). Refused: another rack's bundle,
                 a revision older than the one in use, the same revision with
                 other contents. Then renamed into place
                 (Layout.pushed_bundles/RACK/REVISION: one rename, atomic),
                 and the agent runs again (its unit restarted), which uses it.
                 Refused too: a bundle whose k3s version this jumphost has
                 neither in its image nor pushed, or may not move to from the
                 one installed (one minor at a time, firstboot/k3s_versions.py).
--k3s-bundle DIR with install: that k3s bundle (both arches) copied, verified
                 and put in place first (firstboot/k3s_store.py); it must be
                 the bundle's k3s version. The k3s step then upgrades the
                 server from it, keeping its datastore.
rollback         the newest pushed revision in use is withdrawn (moved to
                 RACK/.withdrawn/), so the newest verified one before it is
                 used, and the agent runs again.
--dry-run        either: what would change (files, and the objects by a
                 server-side dry run of the agent's apply), nothing changed.

Errors are BadInput (exit 2) for a bundle that must not be installed, with
the reason; the staging directory is removed whatever happens.
"""

import os
import shutil
import tempfile
from pathlib import Path

from firstboot import bundle, bundle_archive, bundle_preview, files, k3s_store, k3s_versions, state, system
from firstboot.errors import BadInput
from firstboot.layout import Layout

KEEP = 5                      # pushed revisions kept per rack (rollback goes back through them)
AGENT_UNIT = "rackboot-firstboot.service"


def this_rack(layout: Layout) -> str:
    """The rack this jumphost runs: its agent's last identification, or the
    image's only rack."""
    status = state.load(layout)
    identified = (status.get("steps", {}).get("identify", {}).get("result") or {}).get("rack")
    if identified:
        return identified
    baked = sorted(p.name for p in layout.racks.iterdir() if p.is_dir()) if layout.racks.is_dir() else []
    if len(baked) == 1:
        return baked[0]
    raise BadInput("this jumphost has not identified its rack yet (its agent's identify step has not run or "
                   f"failed), and its image carries {len(baked)} racks",
                   hint="sudo PYTHONPATH=/usr/lib/rackboot python3 -m firstboot status says why")


def _read_archive(archive: Path) -> bytes:
    try:
        return files.read_regular(archive, bundle_archive.MAX_ARCHIVE)
    except (OSError, files.NotRegularFile, files.TooLarge) as err:
        raise BadInput(f"{archive}: cannot read the bundle archive: {err}") from None


def _check_newer(new: bundle.Bundle, current: bundle.Bundle | None) -> bool:
    """Whether new is to be installed (False: it is the one in use); BadInput if it may not be."""
    if current is None or new.revision > current.revision:
        return True
    if new.revision == current.revision and new.digest == current.digest:
        return False
    if new.revision == current.revision:
        raise BadInput(f"revision {new.revision} of rack {new.rack} is in use here with other contents "
                       f"({current.digest}, the pushed one is {new.digest})",
                       hint="a changed bundle needs a higher revision: commit the profile, or push with "
                            "--revision N")
    raise BadInput(f"revision {new.revision} of rack {new.rack} is older than revision {current.revision}, "
                   "which this jumphost uses",
                   hint="to go back to the revision before the one in use: build.py push PROFILE --to HOST "
                        "--rollback")


def _rerun_agent() -> str:
    system.systemctl("restart", AGENT_UNIT, hint=f"journalctl -u {AGENT_UNIT} says why the agent failed")
    return f"the agent ran again ({AGENT_UNIT}); its progress: python3 -m firstboot status"


def _prune_old(layout: Layout, rack: str) -> None:
    for old in bundle.pushed(layout, rack)[KEEP:]:
        shutil.rmtree(old)


def _k3s_for(layout: Layout, new: bundle.Bundle, k3s_source: Path | None, dry_run: bool) -> list[str]:
    """new's k3s: the pushed one put in place (checked only, in a dry run),
    or one the jumphost has; refused when the server may not move to it."""
    version = new.k3s_version
    if k3s_source is not None and k3s_source.name != version:
        raise BadInput(f"--k3s-bundle {k3s_source} is k3s {k3s_source.name}; the bundle wants {version}")
    k3s_versions.check_upgrade(k3s_versions.installed_version(layout.bin_dir / "k3s"), version)
    if k3s_source is not None:
        if dry_run:       # checked in a scratch store, removed
            scratch = Path(tempfile.mkdtemp(prefix=".k3s-check-", dir=layout.state_dir))
            try:
                k3s_store.accept(layout.moving(state_dir=scratch), k3s_source)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return [f"k3s {version}: verified (dry run: not installed)"]
        return [f"k3s {k3s_store.accept(layout, k3s_source)}: installed in {layout.pushed_k3s_bundles}"]
    if k3s_store.locate(layout, version) is None:
        raise BadInput(f"the bundle wants k3s {version}, which this jumphost has neither in its image nor pushed "
                       f"(it has {', '.join(k3s_store.versions(layout)) or 'none'})",
                       hint=f"push it with the bundle: build.py push PROFILE --to HOST --k3s-bundle DIR "
                            f"(./build.py fetch-k3s {version} -o DIR)")
    return []


def _prune_k3s(layout: Layout, rack: str) -> None:
    """Pushed k3s bundles no kept revision wants (each is hundreds of MB)."""
    wanted = {b.k3s_version for b in bundle.verified(layout, rack)}
    if layout.pushed_k3s_bundles.is_dir():
        for old in layout.pushed_k3s_bundles.iterdir():
            if old.name not in wanted and not old.name.startswith("."):
                shutil.rmtree(old)


def install(layout: Layout, archive: Path, dry_run: bool = False, k3s_source: Path | None = None) -> str:
    rack = this_rack(layout)
    data = _read_archive(archive)
    store = layout.pushed_bundles / rack
    store.mkdir(parents=True, exist_ok=True)
    layout.pushed_bundles.chmod(0o755)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store))
    try:
        bundle_archive.unpack(data, staging)
        new = bundle.verify(staging)
        if new.rack != rack:
            raise BadInput(f"the bundle is rack {new.rack}'s; this jumphost is rack {rack}'s",
                           hint="push each rack's profile to its own jumphost (--to its jumphost.ssh_host)")
        current = bundle.choose(layout, rack)
        if not _check_newer(new, current):
            return f"rack {rack}: revision {new.revision} ({new.digest}) is already in use; nothing changed"
        lines = [f"rack {rack}: revision {current.revision if current else 'none'} -> {new.revision}"]
        lines += _k3s_for(layout, new, k3s_source, dry_run)
        if dry_run:
            return "\n".join(lines + bundle_preview.preview(layout, current, new, rack) + ["(dry run: nothing changed)"])
        _set_aside(store / str(new.revision))      # one that failed verification, never used
        os.rename(staging, store / str(new.revision))
        _prune_old(layout, rack)
        _prune_k3s(layout, rack)
        return "\n".join(lines + [f"installed {store / str(new.revision)}", _rerun_agent()])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _set_aside(directory: Path) -> None:
    """A revision's directory out of the agent's way, kept for a look (RACK/.withdrawn/REVISION)."""
    if not directory.exists():
        return
    withdrawn = directory.parent / ".withdrawn"
    withdrawn.mkdir(mode=0o755, exist_ok=True)
    shutil.rmtree(withdrawn / directory.name, ignore_errors=True)
    os.rename(directory, withdrawn / directory.name)


def rollback(layout: Layout, rack: str, dry_run: bool = False) -> str:
    if rack != this_rack(layout):
        raise BadInput(f"this jumphost is rack {this_rack(layout)}'s, not {rack}'s")
    good = bundle.verified(layout, rack)
    if not good or good[0].directory.parent != layout.pushed_bundles / rack:
        raise BadInput(f"rack {rack} uses its image's bundle here: there is no pushed revision to roll back",
                       hint="build.py push PROFILE --to HOST sends a new one")
    if len(good) < 2:
        raise BadInput(f"rack {rack}: revision {good[0].revision} is the only one here; there is none to go back to")
    current, previous = good[0], good[1]
    k3s_versions.check_upgrade(k3s_versions.installed_version(layout.bin_dir / "k3s"), previous.k3s_version)
    lines = [f"rack {rack}: revision {current.revision} -> {previous.revision} (rollback)"]
    if dry_run:
        return "\n".join(lines + bundle_preview.preview(layout, current, previous, rack) + ["(dry run: nothing changed)"])
    _set_aside(current.directory)
    return "\n".join(lines + [f"withdrew revision {current.revision} (kept in {current.directory.parent}/.withdrawn)",
                              _rerun_agent()])


def listing(layout: Layout, rack: str) -> str:
    good = bundle.verified(layout, rack)
    lines = [f"rack {rack}:"] + [f"  revision {b.revision} {b.digest} {b.directory}" + (" (in use)" if i == 0 else "")
                                 for i, b in enumerate(good)]
    return "\n".join(lines)
