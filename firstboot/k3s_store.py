"""Where a machine finds a k3s version's bundle, and the bundles it gets
after its image was made ("k3s upgrades in place").

    Layout.k3s_bundle(VERSION)            the image's (build.py --k3s-bundle)
    Layout.pushed_k3s_bundles/VERSION     pushed with a rack bundle (build.py
                                          push --k3s-bundle DIR: both arches,
                                          on the jumphost), or on a Pi the
                                          arm64 files fetched from its
                                          jumphost (firstboot/k3s_follow.py)

The image's copy wins when both have a version. A bundle lands in the pushed
store only whole and verified: its files are copied (regular files only,
never through a link) into a staging directory beside it, checked against
their own checksum files (firstboot/k3s_bundle_files.py, as the image's are
before an install) and renamed into place, so an interrupted push or
download leaves nothing a later run would take.

The jumphost records the version its k3s server runs once the server is
ready (Layout.k3s_served); its join service tells the Pis that version and
serves its arm64 files (firstboot/k3s_follow.py): a Pi runs the k3s its
jumphost serves, never a newer one.
"""

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from firstboot import k3s_bundle_files as bundle_files
from firstboot.errors import BadInput
from firstboot.layout import Layout

CHUNK = bundle_files.CHUNK


def directories(layout: Layout, version: str) -> list[Path]:
    """Where version's bundle may be, the image's first."""
    return [layout.k3s_bundle(version), layout.pushed_k3s_bundles / version]


def locate(layout: Layout, version: str) -> Path | None:
    """The directory of version's bundle (checked by whoever uses it), or None."""
    return next((d for d in directories(layout, version) if d.is_dir()), None)


def versions(layout: Layout) -> list[str]:
    """Every version this machine has a bundle of, image and pushed."""
    found = set()
    for store in (layout.k3s_bundles, layout.pushed_k3s_bundles):
        if store.is_dir():
            found |= {p.name for p in store.iterdir() if bundle_files.VERSION_RE.fullmatch(p.name)}
    return sorted(found)


def copy_regular(source: Path, target: Path) -> None:
    """source's bytes into a new file target; source must be a regular file
    (a link is refused, not followed)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise bundle_files.BundleFileError(source, bundle_files.Problem.MISSING, f"{source}: missing") from None
    except OSError as err:
        raise bundle_files.BundleFileError(source, bundle_files.Problem.NOT_REGULAR,
                                           f"{source}: cannot read it ({err.strerror})") from None
    with os.fdopen(fd, "rb") as data:
        if not stat.S_ISREG(os.fstat(data.fileno()).st_mode):
            raise bundle_files.BundleFileError(source, bundle_files.Problem.NOT_REGULAR,
                                               f"{source}: not a regular file")
        with open(target, "xb") as out:
            shutil.copyfileobj(data, out, CHUNK)


def staging(layout: Layout) -> Path:
    """A new directory beside the pushed bundles, on their filesystem (renamed into place)."""
    layout.pushed_k3s_bundles.mkdir(parents=True, exist_ok=True)
    layout.pushed_k3s_bundles.chmod(0o755)
    return Path(tempfile.mkdtemp(prefix=".incoming-", dir=layout.pushed_k3s_bundles))


def seal(layout: Layout, directory: Path, version: str, arches) -> Path:
    """directory (from staging()), verified for arches, as the pushed bundle
    of version; a BundleFileError naming the file that does not check."""
    for arch in arches:
        bundle_files.check_arch(directory, arch)
        (directory / bundle_files.binary_name(arch)).chmod(0o755)
    target = layout.pushed_k3s_bundles / version
    if target.exists():
        shutil.rmtree(target)       # the same version again: the verified new copy replaces it
    os.rename(directory, target)
    return target


def accept(layout: Layout, source: Path, arches=bundle_files.ARCHES) -> str:
    """The k3s bundle in source (a directory named after its version, as
    fetch-k3s writes it) copied, verified and put in place; its version."""
    version = source.name
    if not bundle_files.VERSION_RE.fullmatch(version):
        raise BadInput(f"{source}: not a k3s bundle's directory (its name must be a k3s version, such as "
                       "v1.32.3+k3s1)", hint="push the directory ./build.py fetch-k3s wrote")
    work = staging(layout)
    try:
        for arch in arches:
            for name in bundle_files.arch_files(arch):
                copy_regular(source / name, work / name)
        seal(layout, work, version, arches)
        return version
    except bundle_files.BundleFileError as err:
        raise BadInput(f"k3s {version}: {err}",
                       hint="push the whole bundle ./build.py fetch-k3s VERSION -o DIR wrote (fetch it again if "
                            "it is damaged)") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep_only(layout: Layout, version: str) -> None:
    """Drop the pushed store's other versions (a Pi keeps what it runs: its store is in RAM)."""
    if layout.pushed_k3s_bundles.is_dir():
        for old in layout.pushed_k3s_bundles.iterdir():
            if old.name != version and bundle_files.VERSION_RE.fullmatch(old.name):
                shutil.rmtree(old)


def record_served(layout: Layout, version: str) -> None:
    """The version the jumphost's server runs, now that it is ready."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    scratch = layout.k3s_served.with_suffix(".tmp")
    scratch.write_text(json.dumps({"version": version}) + "\n")
    os.replace(scratch, layout.k3s_served)


def served(layout: Layout) -> str | None:
    """What record_served last wrote, if anything (and a version)."""
    try:
        version = json.loads(layout.k3s_served.read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) and bundle_files.VERSION_RE.fullmatch(version) else None
