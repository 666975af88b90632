"""Serve: the jumphost serves its rack's Pis their network boot.

    /usr/share/rackboot/racks/RACK/tftp/      the rack's TFTP tree, made with the image
    netboot.tftp_root -> that tree            a link: what dnsmasq serves
    /usr/lib/rackboot/pi-root.squashfs        the Pis' shared root, made with the image,
    /srv/rackboot/pi-root                     mounted here read-only by its mount unit
    netboot.nfs_root                          exported read-only (a bind mount when it is
                                              not the image's own path)
    /etc/dnsmasq.d/rackboot-netboot.conf      the rack's rendered dnsmasq configuration,
                                              run by rackboot-dnsmasq.service
    /etc/exports.d/rackboot.exports           the rack's rendered export, loaded by exportfs
    rackboot-join.service                     gives the Pis their k3s agent token (join.py)

It runs on the jumphost before the token step: Pis can boot, and wait for the
cluster, even while the secret store is out of reach.

The export must be a filesystem of its own. With no_subtree_check (and even
with subtree_check, for files of directories the export shares), the Linux
NFS server accepts a file handle for any file on the exported filesystem,
not only for those under the exported directory: a host on the segment that
forges handles reads whatever that filesystem holds. So the Pis' root is a
squashfs image, and the export is refused unless it is the whole of a
filesystem other than the jumphost's root.
"""

import os
import re
import subprocess
from pathlib import Path

from firstboot import k3s, system
from firstboot.errors import RackbootError

# Where the jumphost image mounts the Pis' shared root, and the image file
# it mounts (image/netboot.py makes both).
IMAGE_PI_ROOT = "/srv/rackboot/pi-root"
PI_ROOT = Path(IMAGE_PI_ROOT)
PI_ROOT_IMAGE = "/usr/lib/rackboot/pi-root.squashfs"
DNSMASQ_CONF = Path("/etc/dnsmasq.d/rackboot-netboot.conf")
EXPORTS = Path("/etc/exports.d/rackboot.exports")
DNSMASQ_UNIT = "rackboot-dnsmasq.service"
JOIN_UNIT = "rackboot-join.service"
UNIT_DIR = Path("/etc/systemd/system")


def _link(link: Path, target: Path) -> bool:
    """Make link a symlink to target; True if it changed."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return False
    if link.exists() and not link.is_symlink():
        raise RackbootError(f"{link} (netboot.tftp_root) exists and is not rackboot's link to {target}",
                            hint=f"move {link} away, or set netboot.tftp_root to another path")
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.rackboot")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)
    return True


# Its mount unit, named as systemd names it: systemd-escape --path --suffix=mount /srv/rackboot/pi-root
PI_ROOT_UNIT = "srv-rackboot-pi\\x2droot.mount"


def _unescape(field: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_at(path: Path) -> str | None:
    """The root (within its filesystem) of what is mounted at path, the last
    mount there being the one seen; None when path is no mount point."""
    root = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if _unescape(fields[4]) == str(path):
            root = _unescape(fields[3])
    return root


def _is_mount_point(path: Path) -> bool:
    return _mount_at(path) is not None


PI_ROOT_HINT = (f"the Pis' root must be a filesystem of its own: {PI_ROOT_UNIT} mounts the image's "
                f"{PI_ROOT_IMAGE} at {PI_ROOT} (systemctl status '{PI_ROOT_UNIT}'); an image without "
                "that file predates it and must be rebuilt with ./build.py image")


def require_own_filesystem(path: Path, what: str, hint: str = PI_ROOT_HINT) -> None:
    """Refuse to export path unless it is the whole of a filesystem other than
    the root's: everything a file handle can reach on that filesystem is then
    under path. (A bind mount of a directory is a mount point too, but the
    rest of its filesystem stays reachable: its mount root is not /.)"""
    root = _mount_at(path)
    if root is None:
        problem = "is a directory of the filesystem it is on, not a filesystem of its own"
    elif root != "/":
        problem = f"is a bind mount of {root}, a directory of a larger filesystem"
    elif path.stat().st_dev == Path("/").stat().st_dev:
        problem = "is on the jumphost's root filesystem"
    else:
        return
    raise RackbootError(
        f"refusing to export {path} ({what}): it {problem}, and an NFS client could reach every file of "
        "that filesystem by file handle (the jumphost's tokens, keys and credentials)", hint=hint)


def _withdraw_export() -> None:
    """No export of the Pis' root at all rather than one of the wrong
    filesystem: an earlier run's export is unloaded."""
    if EXPORTS.exists():
        EXPORTS.unlink()
        subprocess.run(["exportfs", "-ra"], stdin=subprocess.DEVNULL, capture_output=True)


def _bind(source: Path, target: Path) -> bool:
    if _is_mount_point(target):
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RackbootError(f"cannot bind the Pi root {source} to {target} (netboot.nfs_root): "
                            f"{result.stderr.strip()}")
    return True


def _run_unit(unit: str, restart: bool) -> None:
    system.systemctl("enable", unit)
    running = system.systemctl("is-active", "--quiet", unit, check=False).returncode == 0
    if restart or not running:
        system.systemctl("restart" if running else "start", "--no-block", unit)


def _mount_pi_root() -> None:
    """The image's squashfs at PI_ROOT, by its (enabled) mount unit: normally
    mounted at boot already, and then this changes nothing."""
    result = system.systemctl("start", PI_ROOT_UNIT, check=False)
    if result.returncode != 0:
        raise RackbootError(f"cannot mount the Pis' root at {PI_ROOT}: systemctl start {PI_ROOT_UNIT} failed: "
                            f"{(result.stderr or result.stdout).strip()}",
                            hint=f"journalctl -u '{PI_ROOT_UNIT}' says more; an image without "
                                 f"{PI_ROOT_IMAGE} must be rebuilt with ./build.py image")


def serve(profile) -> dict:
    if not profile.pis:
        return {"skipped": f"rack {profile.rack} has no Pis"}
    rendered = k3s.RACKS / profile.rack
    tree = rendered / "tftp"
    missing = [str(path) for path in (tree / "config.txt", tree / "vmlinuz", Path(PI_ROOT_IMAGE))
               if not path.exists()]
    if not missing:
        _mount_pi_root()
        missing = [str(path) for path in (PI_ROOT / "usr/lib/rackboot",) if not path.exists()]
    if missing:
        raise RackbootError(f"this image has no Pi netboot files for rack {profile.rack} "
                            f"(missing {', '.join(missing)})",
                            hint="rebuild the jumphost image: ./build.py image builds the Pi root and TFTP tree")
    changed = []
    nfs_root = Path(profile.netboot.nfs_root)
    try:
        require_own_filesystem(PI_ROOT, "the Pis' root")
        if nfs_root != PI_ROOT and _bind(PI_ROOT, nfs_root):
            changed.append("nfs-root")
        require_own_filesystem(nfs_root, "netboot.nfs_root",
                               hint=f"the agent bind-mounts the Pis' root {PI_ROOT} at netboot.nfs_root; "
                                    f"unmount what is mounted at {nfs_root} (findmnt {nfs_root})")
    except RackbootError:
        _withdraw_export()
        raise
    if _link(Path(profile.netboot.tftp_root), tree):
        changed.append("tftp-root")
    if system.place_file(rendered / "jumphost/rootfs" / EXPORTS.relative_to("/"), EXPORTS):
        changed.append("exports")
    # Load the export table at every run (cheap; nfs-server, enabled by its
    # package, loads it too when it starts). Before dnsmasq's and the join
    # service's files are placed: a failure here leaves them as they were, so
    # the next run still finds them changed and restarts the services.
    result = subprocess.run(["exportfs", "-ra"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RackbootError(f"exportfs -ra failed: {(result.stderr or result.stdout).strip()}",
                            hint=f"check {EXPORTS} and that {nfs_root} exists")
    for target, name in ((DNSMASQ_CONF, "dnsmasq-config"), (UNIT_DIR / DNSMASQ_UNIT, "dnsmasq-unit"),
                         (UNIT_DIR / JOIN_UNIT, "join-unit")):
        if system.place_file(rendered / "jumphost/rootfs" / target.relative_to("/"), target):
            changed.append(name)
    if {"dnsmasq-unit", "join-unit"} & set(changed):
        system.systemctl("daemon-reload")
    _run_unit(DNSMASQ_UNIT, restart={"dnsmasq-config", "dnsmasq-unit"} & set(changed))
    _run_unit(JOIN_UNIT, restart="join-unit" in changed)
    return {"pis": len(profile.pis), "tftp_root": profile.netboot.tftp_root, "nfs_root": str(nfs_root),
            "dhcp": str(profile.netboot.dhcp), "changed": changed}
