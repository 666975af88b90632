"""Serve: the jumphost serves its rack's Pis their network boot.

    Layout.tftp_tree(RACK)        the rack's TFTP tree, made with the image
    netboot.tftp_root -> that     a link: what dnsmasq serves
    Layout.pi_root_image          the Pis' shared root (a squashfs), made with the image,
    Layout.pi_root                mounted there read-only by its mount unit (PI_ROOT_UNIT)
    netboot.nfs_root              exported read-only (a bind mount when it is not
                                  Layout.pi_root)
    Layout.dnsmasq_conf           the rack's rendered dnsmasq configuration, run by
                                  rackboot-dnsmasq.service
    Layout.exports                the rack's rendered export, loaded by exportfs
    rackboot-join.service         gives the Pis their k3s agent token and the rack's
                                  bundle in use (join.py), restarted when that changes

(firstboot/layout.py says where each is.)

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
from pathlib import Path

from firstboot import system
from firstboot.commands import CommandFailed, run
from firstboot.errors import RackbootError
from firstboot.layout import MACHINE, PI_ROOT_UNIT, Layout, Role

DNSMASQ_UNIT = "rackboot-dnsmasq.service"
JOIN_UNIT = "rackboot-join.service"
MOUNTINFO = Path("/proc/self/mountinfo")


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


def _unescape(field: str) -> str:
    """A mountinfo field: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_at(path: Path) -> str | None:
    """The root (within its filesystem) of what is mounted at path, the last
    mount there being the one seen; None when path is no mount point."""
    root = None
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split()
        if _unescape(fields[4]) == str(path):
            root = _unescape(fields[3])
    return root


def _is_mount_point(path: Path) -> bool:
    return _mount_at(path) is not None


PI_ROOT_HINT = (f"the Pis' root must be a filesystem of its own: {PI_ROOT_UNIT} mounts the image's "
                f"{MACHINE.pi_root_image} at {MACHINE.pi_root} (systemctl status '{PI_ROOT_UNIT}'); an image without "
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


def _withdraw_export(layout: Layout) -> None:
    """No export of the Pis' root at all rather than one of the wrong
    filesystem: an earlier run's export is unloaded."""
    if layout.exports.exists():
        layout.exports.unlink()
        run(["exportfs", "-ra"], capture=True, check=False)   # best effort: the refusal is the error


def _bind(source: Path, target: Path) -> bool:
    if _is_mount_point(target):
        return False
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", "-o", "ro", source, target], capture=True,
        hint=f"the agent binds the Pis' root {source} at netboot.nfs_root ({target}); check that path")
    return True


def _mount_pi_root(layout: Layout) -> None:
    """The image's squashfs at the Pi root, by its (enabled) mount unit:
    normally mounted at boot already, and then this changes nothing."""
    try:
        system.systemctl("start", PI_ROOT_UNIT)
    except CommandFailed as err:
        raise RackbootError(f"cannot mount the Pis' root at {layout.pi_root}: {err}",
                            hint=f"journalctl -u '{PI_ROOT_UNIT}' says more; an image without "
                                 f"{layout.pi_root_image} must be rebuilt with ./build.py image") from None


def _check_netboot_files(layout: Layout, rack: str) -> None:
    tree = layout.tftp_tree(rack)
    missing = [str(path) for path in (tree / "config.txt", tree / "vmlinuz", layout.pi_root_image)
               if not path.exists()]
    if not missing:
        _mount_pi_root(layout)
        missing = [str(path) for path in (layout.pi_root / MACHINE.agent_dir.relative_to("/"),)
                   if not path.exists()]
    if missing:
        raise RackbootError(f"this image has no Pi netboot files for rack {rack} "
                            f"(missing {', '.join(missing)})",
                            hint="rebuild the jumphost image: ./build.py image builds the Pi root and TFTP tree")


def _export_pi_root(layout: Layout, nfs_root: Path) -> list[str]:
    """The Pis' root at nfs_root, each a filesystem of its own, or no export."""
    changed = []
    try:
        require_own_filesystem(layout.pi_root, "the Pis' root")
        if nfs_root != layout.pi_root and _bind(layout.pi_root, nfs_root):
            changed.append("nfs-root")
        require_own_filesystem(nfs_root, "netboot.nfs_root",
                               hint=f"the agent bind-mounts the Pis' root {layout.pi_root} at netboot.nfs_root; "
                                    f"unmount what is mounted at {nfs_root} (findmnt {nfs_root})")
    except RackbootError:
        _withdraw_export(layout)
        raise
    return changed


def _place_rendered(layout: Layout, rack: str, target: Path) -> bool:
    """The rack's rendered jumphost file for machine path target, placed there."""
    return system.place_file(layout.rendered(rack, Role.JUMPHOST, target), layout.root / target.relative_to("/"))


def serve(layout: Layout, profile, bundle_digest: str | None = None, served_before: str | None = None) -> dict:
    """bundle_digest: the rack's bundle in use; served_before: the one the
    last run's serve step served (the join service serves the bundle it read
    when it started, so it restarts when they differ)."""
    if not profile.pis:
        return {"skipped": f"rack {profile.rack} has no Pis"}
    _check_netboot_files(layout, profile.rack)
    nfs_root = Path(profile.netboot.nfs_root)
    changed = _export_pi_root(layout, nfs_root)
    if _link(Path(profile.netboot.tftp_root), layout.tftp_tree(profile.rack)):
        changed.append("tftp-root")
    if _place_rendered(layout, profile.rack, MACHINE.exports):
        changed.append("exports")
    # Load the export table at every run (cheap; nfs-server, enabled by its
    # package, loads it too when it starts). Before dnsmasq's and the join
    # service's files are placed: a failure here leaves them as they were, so
    # the next run still finds them changed and restarts the services.
    run(["exportfs", "-ra"], capture=True, hint=f"check {layout.exports} and that {nfs_root} exists")
    for target, name in ((MACHINE.dnsmasq_conf, "dnsmasq-config"), (MACHINE.unit(DNSMASQ_UNIT), "dnsmasq-unit"),
                         (MACHINE.unit(JOIN_UNIT), "join-unit")):
        if _place_rendered(layout, profile.rack, target):
            changed.append(name)
    if {"dnsmasq-unit", "join-unit"} & set(changed):
        system.systemctl("daemon-reload")
    system.ensure_running(DNSMASQ_UNIT, restart=bool({"dnsmasq-config", "dnsmasq-unit"} & set(changed)))
    if bundle_digest != served_before:
        changed.append("bundle")
    system.ensure_running(JOIN_UNIT, restart=bool({"join-unit", "bundle"} & set(changed)))
    return {"pis": len(profile.pis), "tftp_root": profile.netboot.tftp_root, "nfs_root": str(nfs_root),
            "dhcp": str(profile.netboot.dhcp), "changed": changed, "bundle": bundle_digest}
