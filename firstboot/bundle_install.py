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

from firstboot import bundle, bundle_archive, bundle_preview, files, state, system
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


def install(layout: Layout, archive: Path, dry_run: bool = False) -> str:
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
        if dry_run:
            return "\n".join(lines + bundle_preview.preview(layout, current, new, rack) + ["(dry run: nothing changed)"])
        _set_aside(store / str(new.revision))      # one that failed verification, never used
        os.rename(staging, store / str(new.revision))
        _prune_old(layout, rack)
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
