"""A rack bundle's revision, its profile files, and sealing the bundles an image
carries (firstboot/bundle.py says what a bundle holds; image/bundle_build.py
writes one for build.py bundle and push).

The revision. Pushes must be able to tell older from newer across builds on
any machine, so it comes from the profile's git repository, not from a clock
or a counter kept on one build host: the number of commits of HEAD's history
(`git rev-list --count HEAD`), which grows with every commit on a line of
history, with HEAD's commit recorded beside it. Only a checkout whose rack
inputs (the profile's directory: profiles, defaults, manifests; and the
templates) are committed gets one: uncommitted changes would give two
different bundles one revision. Otherwise `--revision N` says it, or the
build refuses (exit 2). An image built from uncommitted profiles carries
revision 0 (unversioned): any pushed revision is newer.
"""

import logging
import shutil
from pathlib import Path

from firstboot import bundle
from firstboot.commands import CommandFailed, run
from firstboot.errors import BadInput
from firstboot.profile import RackProfile
from image import payload, render

log = logging.getLogger("rackboot")
UNVERSIONED = 0


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = run(["git", "-C", directory, *args], capture=True, check=False)
    except CommandFailed:       # no git on this machine: no revision from it
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_revision(profile: RackProfile) -> tuple[int, str] | None:
    """(commit count of HEAD, HEAD) of the profile's repository when the
    rack's inputs are committed; None otherwise (not a repository, uncommitted changes)."""
    directory = profile.source.resolve().parent
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    inputs = [str(directory)] + [str(p) for p in (render.TEMPLATES,) if p.is_relative_to(top)]
    changes = _git(directory, "status", "--porcelain", "--untracked-files=all", "--", *inputs)
    count, commit = _git(directory, "rev-list", "--count", "HEAD"), _git(directory, "rev-parse", "HEAD")
    if changes is None or changes or not count or not commit:
        return None
    return int(count), commit


def revision(profile: RackProfile, explicit: int | None) -> tuple[int, str | None]:
    """The bundle's revision and commit: explicit (--revision), or git's; BadInput if neither."""
    if explicit is not None:
        return explicit, None
    found = git_revision(profile)
    if found is None:
        raise BadInput(f"{profile.source}: no revision for rack {profile.rack}'s bundle: its profiles are not in a "
                       "git repository, or have uncommitted changes",
                       hint="commit the profile (the revision is the repository's commit count), or give "
                            "--revision N (higher than the jumphost's)")
    return found


def image_revision(profile: RackProfile) -> tuple[int, str | None]:
    return git_revision(profile) or (UNVERSIONED, None)


def copy_profiles(profile: RackProfile, destination: Path) -> None:
    """The profile, its defaults and its manifests into destination/profiles,
    at the paths the model names them by."""
    for source, relative in payload.profile_files([profile]).items():
        target = destination / bundle.PROFILES / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def normalise_modes(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def seal_racks(profiles: list[RackProfile], racks_dir: Path) -> None:
    """The image's rack trees (rendered, and a TFTP tree for racks with Pis)
    made bundles: their profiles added, sealed with the image's revision."""
    for profile in profiles:
        directory = racks_dir / profile.rack
        copy_profiles(profile, directory)
        normalise_modes(directory)
        number, commit = image_revision(profile)
        log.info("  rack %s: bundle revision %d", profile.rack, number)
        bundle.seal(directory, profile.rack, number, profile.k3s.version, commit)
