"""A rack bundle: everything that is one rack's own, as one versioned artifact.

    RACK/ (a directory)
        BUNDLE.json                  format, rack, revision, k3s version, source
                                     commit, every entry below, and the digest
        profile.json                 the checked model (firstboot/rack_model.py)
        profiles/                    the profile, its defaults.yaml and manifests,
                                     at the paths the model names them by
        jumphost/, pi/, router/      the rendered files (image/render.py)
        tftp/                        the Pis' TFTP tree: config.txt, cmdline.txt,
                                     links to the image's shared boot files, one
                                     directory per Pi (racks with Pis)

Where bundles are: the image carries the ones it was built with
(Layout.racks/RACK); pushed ones live in Layout.pushed_bundles/RACK/REVISION.
The agent uses, per rack, the newest revision present that verifies
(choose); one that does not is skipped with a log line saying why, never used.

The digest is sha256 over the canonical JSON of the header (format, rack,
revision, k3s version) and the sorted entries: for each path, its kind, its
mode and its content's sha256 (a file) or its target (a link). The same
inputs give the same digest and the same bytes. It catches a damaged or
half-copied bundle and one relabelled for another rack or revision; it is not
a signature (only root writes where bundles live, and push is an admin's).

Links are allowed only in tftp/: a Pi's directory to the tree itself
(`SERIAL -> .`), a file of the tree (`../NAME`, in the image's Pi
directories) or one of the image's shared Pi boot files (Layout.pi_boot/NAME). Anything else (a
link elsewhere, a device, a setuid or group/world-writable file) is refused:
dnsmasq serves the TFTP tree to the rack network and would follow a link.
"""

import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from firstboot.errors import BadInput
from firstboot.layout import MACHINE, Layout

log = logging.getLogger("rackboot.bundle")

FORMAT = "rackboot-bundle/1"
META = "BUNDLE.json"
PROFILES = "profiles"               # the bundle's own profile files
UNSEALED = -1                       # an image's rack tree made before bundles: older than any revision
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_META_BYTES = 64 << 20


class BundleInvalid(BadInput):
    """A bundle that must not be used: damaged, foreign, or not a bundle."""


@dataclass(frozen=True)
class Bundle:
    directory: Path
    rack: str
    revision: int
    k3s_version: str
    digest: str
    commit: str | None = None
    entries: tuple = ()              # (path, kind, mode, value), sorted

    def describe(self) -> str:
        return f"rack {self.rack} revision {self.revision} ({self.digest[:19]}...)"


def _entry(path: Path, relative: str) -> tuple[str, str, str, str]:
    info = os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return (relative, "link", "", os.readlink(path))
    if mode & 0o7022:
        raise BundleInvalid(f"{path}: mode {mode:04o} (setuid, sticky, group or world writable) is not allowed")
    if stat.S_ISDIR(info.st_mode):
        return (relative, "dir", f"{mode:04o}", "")
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as data:
            return (relative, "file", f"{mode:04o}", hashlib.file_digest(data, "sha256").hexdigest())
    raise BundleInvalid(f"{path}: neither a file, a directory nor a link")


def _check_link(relative: str, target: str) -> None:
    parts = PurePosixPath(relative).parts
    name = PurePosixPath(target).name
    fine = parts[0] == "tftp" and (
        target == "." and len(parts) == 2 or                    # a Pi's directory: the tree itself
        NAME.fullmatch(name) and (target == f"../{name}" and len(parts) == 3 or target == f"{MACHINE.pi_boot}/{name}"))
    if not fine:
        raise BundleInvalid(f"{relative}: a link to {target!r}; a bundle's only links are the TFTP tree's, to "
                            f"., ../NAME or {MACHINE.pi_boot}/NAME")


def entries(directory: Path) -> tuple:
    """Every path under directory but META, sorted, as (path, kind, mode, value)."""
    found = []
    for top, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = Path(top, name)
            relative = path.relative_to(directory).as_posix()
            if relative == META:
                continue
            entry = _entry(path, relative)
            if entry[1] == "link":
                _check_link(relative, entry[3])
            found.append(entry)
    return tuple(sorted(found))


def digest(rack: str, revision: int, k3s_version: str, listed) -> str:
    header = {"format": FORMAT, "rack": rack, "revision": revision, "k3s_version": k3s_version}
    text = json.dumps([header, [list(e) for e in listed]], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def seal(directory: Path, rack: str, revision: int, k3s_version: str, commit: str | None = None) -> Bundle:
    """Write directory's META for what it holds now; the bundle."""
    listed = entries(directory)
    bundle = Bundle(directory, rack, revision, k3s_version, digest(rack, revision, k3s_version, listed), commit,
                    listed)
    meta = {"format": FORMAT, "rack": rack, "revision": revision, "k3s_version": k3s_version,
            "commit": commit, "digest": bundle.digest}
    # One key, and one entry, a line: readable, and diffable between revisions.
    lines = [f"{json.dumps(key)}: {json.dumps(value)}," for key, value in sorted(meta.items())]
    lines += ['"entries": [', ",\n".join(json.dumps(list(e)) for e in listed), "]"]
    (directory / META).write_text("{\n" + "\n".join(lines) + "\n}\n")
    os.chmod(directory / META, 0o644)
    return bundle


def _meta(directory: Path) -> dict:
    path = directory / META
    try:
        if path.is_symlink() or not path.is_file():
            raise BundleInvalid(f"{path}: missing or not a regular file")
        if path.stat().st_size > MAX_META_BYTES:
            raise BundleInvalid(f"{path}: larger than {MAX_META_BYTES} bytes")
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BundleInvalid(f"{path}: unreadable: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleInvalid(f"{path}: not a {FORMAT} bundle")
    kinds = {"rack": str, "revision": int, "k3s_version": str, "digest": str, "entries": list}
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise BundleInvalid(f"{path}: {key} missing or not a {kind.__name__}")
    if meta["revision"] < 0:
        raise BundleInvalid(f"{path}: revision {meta['revision']} is negative")
    return meta


def verify(directory: Path, rack: str | None = None, revision: int | None = None) -> Bundle:
    """The bundle at directory, every entry and the digest checked; BundleInvalid
    if anything differs, or it is not rack's (revision's) when those are given."""
    meta = _meta(directory)
    if rack is not None and meta["rack"] != rack:
        raise BundleInvalid(f"{directory}: a bundle of rack {meta['rack']!r}, not of {rack!r}")
    if revision is not None and meta["revision"] != revision:
        raise BundleInvalid(f"{directory}: holds revision {meta['revision']}, not {revision}")
    listed = entries(directory)
    if [list(e) for e in listed] != meta["entries"]:
        recorded = {e[0]: e for e in map(tuple, meta["entries"]) if e}
        on_disk = {e[0]: e for e in listed}
        differing = sorted(p for p in recorded.keys() | on_disk.keys() if recorded.get(p) != on_disk.get(p))
        raise BundleInvalid(f"{directory}: its files differ from {META} ({len(differing)} paths, first "
                            f"{', '.join(differing[:3])})")
    expected = digest(meta["rack"], meta["revision"], meta["k3s_version"], listed)
    if meta["digest"] != expected:
        raise BundleInvalid(f"{directory}: digest {meta['digest']} recorded, {expected} computed")
    return Bundle(directory, meta["rack"], meta["revision"], meta["k3s_version"], meta["digest"],
                  meta.get("commit"), listed)


def pushed(layout: Layout, rack: str) -> list[Path]:
    """The pushed revisions' directories of rack, newest first."""
    store = layout.pushed_bundles / rack
    found = [p for p in store.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink()] \
        if store.is_dir() else []
    return sorted(found, key=lambda p: int(p.name), reverse=True)


def candidates(layout: Layout, rack: str) -> list[tuple[Path, int | None]]:
    """(directory, revision its place says) of every bundle of rack: pushed
    ones newest first, then the image's (whose revision only its META says)."""
    found = [(p, int(p.name)) for p in pushed(layout, rack)]
    baked = layout.racks / rack
    if baked.is_dir():
        found.append((baked, None))
    return found


def verified(layout: Layout, rack: str) -> list[Bundle]:
    """rack's bundles that verify, newest first; each one that does not is logged and left out."""
    good = []
    for directory, revision in candidates(layout, rack):
        if revision is None and not (directory / META).exists() and not directory.is_symlink():
            # An image built before bundles: its tree came whole with the image.
            log.info("rack %s: %s is the image's rack tree from before bundles (unsealed)", rack, directory)
            good.append(Bundle(directory, rack, UNSEALED, "", "unsealed"))
            continue
        try:
            good.append(verify(directory, rack, revision))
        except BundleInvalid as err:
            log.warning("rack %s: skipping the bundle at %s, which failed verification: %s", rack, directory, err)
    return sorted(good, key=lambda b: b.revision, reverse=True)


def racks(layout: Layout) -> list[str]:
    names = set()
    for parent in (layout.racks, layout.pushed_bundles):
        if parent.is_dir():
            names |= {p.name for p in parent.iterdir() if p.is_dir() and NAME.fullmatch(p.name)}
    return sorted(names)


def choose(layout: Layout, rack: str) -> Bundle | None:
    good = verified(layout, rack)
    return good[0] if good else None


def choose_all(layout: Layout) -> tuple[Layout, dict[str, Bundle]]:
    """layout with each rack's newest verified bundle chosen (Layout.rack
    then names it), and those bundles."""
    chosen = {}
    for rack in racks(layout):
        bundle = choose(layout, rack)
        if bundle is None:
            log.warning("rack %s: no bundle of it verifies; it is left out", rack)
            continue
        chosen[rack] = bundle
    return layout.choosing({rack: b.directory for rack, b in chosen.items()}), chosen
