"""Serve: the jumphost serves its rack's Pis their network boot.

    /usr/share/rackboot/racks/RACK/tftp/      the rack's TFTP tree, made with the image
    netboot.tftp_root -> that tree            a link: what dnsmasq serves
    /srv/rackboot/pi-root                     the Pis' shared root, made with the image
    netboot.nfs_root                          exported read-only (a bind mount when it is
                                              not the image's own path)
    /etc/dnsmasq.d/rackboot-netboot.conf      the rack's rendered dnsmasq configuration,
                                              run by rackboot-dnsmasq.service
    /etc/exports.d/rackboot.exports           the rack's rendered export, loaded by exportfs
    rackboot-join.service                     gives the Pis their k3s agent token (join.py)

It runs on the jumphost before the token step: Pis can boot, and wait for the
cluster, even while the secret store is out of reach.
"""

import os
import subprocess
from pathlib import Path

from firstboot import k3s, system
from firstboot.errors import RackbootError

# Where the jumphost image keeps the Pis' shared root (image/netboot.py puts it there).
IMAGE_PI_ROOT = "/srv/rackboot/pi-root"
PI_ROOT = Path(os.environ.get("RACKBOOT_PI_ROOT", IMAGE_PI_ROOT))
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


def _is_mount_point(path: Path) -> bool:
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in mounts)


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


def serve(profile) -> dict:
    if not profile.pis:
        return {"skipped": f"rack {profile.rack} has no Pis"}
    rendered = k3s.RACKS / profile.rack
    tree = rendered / "tftp"
    missing = [str(path) for path in (tree / "config.txt", tree / "vmlinuz", PI_ROOT / "usr/lib/rackboot")
               if not path.exists()]
    if missing:
        raise RackbootError(f"this image has no Pi netboot files for rack {profile.rack} "
                            f"(missing {', '.join(missing)})",
                            hint="rebuild the jumphost image: ./build.py image builds the Pi root and TFTP tree")
    changed = []
    if _link(Path(profile.netboot.tftp_root), tree):
        changed.append("tftp-root")
    nfs_root = Path(profile.netboot.nfs_root)
    if nfs_root != PI_ROOT and _bind(PI_ROOT, nfs_root):
        changed.append("nfs-root")
    for target, name in ((EXPORTS, "exports"), (DNSMASQ_CONF, "dnsmasq-config"),
                         (UNIT_DIR / DNSMASQ_UNIT, "dnsmasq-unit"), (UNIT_DIR / JOIN_UNIT, "join-unit")):
        if system.place_file(rendered / "jumphost/rootfs" / target.relative_to("/"), target):
            changed.append(name)
    if {"dnsmasq-unit", "join-unit"} & set(changed):
        system.systemctl("daemon-reload")
    # Load the export table at every run (cheap; nfs-server, enabled by its
    # package, loads it too when it starts).
    result = subprocess.run(["exportfs", "-ra"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RackbootError(f"exportfs -ra failed: {(result.stderr or result.stdout).strip()}",
                            hint=f"check {EXPORTS} and that {nfs_root} exists")
    _run_unit(DNSMASQ_UNIT, restart={"dnsmasq-config", "dnsmasq-unit"} & set(changed))
    _run_unit(JOIN_UNIT, restart="join-unit" in changed)
    return {"pis": len(profile.pis), "tftp_root": profile.netboot.tftp_root, "nfs_root": str(nfs_root),
            "dhcp": str(profile.netboot.dhcp), "changed": changed}
