"""clusters.json: the original team's list of clusters (google/skia-buildbot
kube/clusters/config.json, read by their attach.sh and pushk), one k3s entry
per rack:

    {"clusters": {RACK: {"type": "k3s", "context_name": RACK,
                         "jumphost": SSH HOST, "port": "PORT"}}}

The port is a string, as theirs was. Every value comes from a checked
profile: the rack's name, jumphost.ssh_host (an RFC 1123 host name or an
IPv4 address) and k3s.attach_port (1024-65535, no two racks given together
alike). Ports are written in the profiles, never derived, so a rack added to
the directory changes no other rack's entry.

The file is replaced whole (firstboot/system.place), so it may be rackboot's
only: a file that holds anything else (the original team's gitdir and repo,
GKE clusters) or is not such a file at all is refused, unchanged."""

import json
import logging
import os
import stat
import sys
from pathlib import Path

from firstboot.errors import BadInput, ProfileError
from firstboot.profile import Problem, RackProfile
from image import atomic

log = logging.getLogger("rackboot")

STDOUT = Path("-")
TYPE = "k3s"
FIRST_SUGGESTED_PORT = 6444     # after k3s's own 6443, for a rack that has no attach port yet
MAX_EXISTING_BYTES = 1 << 20


def entry(profile: RackProfile) -> dict:
    return {"type": TYPE, "context_name": profile.rack, "jumphost": profile.jumphost.ssh_host,
            "port": str(profile.k3s.attach_port)}


def require_attach_ports(profiles: list[RackProfile]) -> None:
    """Each rack needs its k3s.attach_port; the message suggests a free one."""
    used = {p.k3s.attach_port for p in profiles}
    free = next(port for port in range(FIRST_SUGGESTED_PORT, 65536) if port not in used)
    missing = [str(Problem(("k3s", "attach_port"), f"is needed to attach to rack {p.rack}: a port of the "
                                                   f"operator's machine no other rack uses, such as {free}",
                           p.source))
               for p in profiles if p.k3s.attach_port is None]
    if missing:
        raise ProfileError(missing)


def document(profiles: list[RackProfile]) -> dict:
    require_attach_ports(profiles)
    return {"clusters": {p.rack: entry(p) for p in sorted(profiles, key=lambda p: p.rack)}}


def render(profiles: list[RackProfile]) -> bytes:
    return (json.dumps(document(profiles), indent=4) + "\n").encode()


def _what_else(existing: object) -> list[str]:
    """What an existing file holds that rackboot does not write."""
    if not isinstance(existing, dict):
        return ["not a JSON object"]
    others = [f"the key {key!r}" for key in sorted(existing) if key != "clusters"]
    clusters = existing.get("clusters", {})
    if not isinstance(clusters, dict):
        return others + ["clusters that is not an object"]
    return others + [f"cluster {name!r} of another type" for name, value in sorted(clusters.items())
                     if not (isinstance(value, dict) and value.get("type") == TYPE)]


def check_destination(path: Path) -> dict:
    """Refuse (BadInput) a destination rackboot must not replace; the
    clusters it now lists ({} for a new file or standard output)."""
    if path == STDOUT:
        return {}
    if not path.parent.is_dir():
        raise BadInput(f"{path}: its directory {path.parent} does not exist")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "a directory or special file"
        raise BadInput(f"{path}: {kind}, not a regular file; clusters writes a regular file there",
                       hint="name the file itself")
    if info.st_size > MAX_EXISTING_BYTES:
        raise BadInput(f"{path}: {info.st_size} bytes is not a clusters file rackboot wrote; it replaces only those")
    try:
        existing = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        existing = None
    what_else = _what_else(existing) if existing is not None else ["not JSON"]
    if what_else:
        raise BadInput(f"{path}: holds {', '.join(what_else)}; clusters replaces the whole file, so it writes "
                       "only a file of its own", hint="write it to another file and merge by hand")
    return existing.get("clusters", {})


def write(path: Path, profiles: list[RackProfile]) -> None:
    data = render(profiles)
    if path == STDOUT:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    before = check_destination(path)
    for rack in sorted(set(before) - {p.rack for p in profiles}):
        log.info("%s: rack %s is no longer listed", path, rack)
    atomic.write_file(path, data, 0o644 & ~_umask())
    log.info("%s: %d racks", path, len(profiles))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
