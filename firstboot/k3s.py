"""k3s: install the image's k3s as the server (jumphost) or an agent (Pi),
the way k3s's install.sh does it air-gapped, and start it.

    Layout.k3s_bundle(VERSION)     the bundle in the image (binary, images, checksums)
    Layout.bin_dir / k3s           and the kubectl, crictl, ctr links
    Layout.k3s_images              the air-gap images k3s imports at start
    Layout.k3s_config              the rack's rendered config (token-file, labels, ...)
    Layout.node_password           this node's password (see below)
    Layout.k3s_tls                 the rack's cluster CA, when its profile has k3s.ca (firstboot/k3s_ca.py)
    Layout.unit("k3s.service")     or k3s-agent.service on a Pi

(firstboot/layout.py says where each is.)

Every file is compared first and replaced atomically only when it differs;
the service restarts only when something changed, so running the agent again
with a newer bundle upgrades k3s, and running it on an unchanged machine
changes nothing ("to upgrade, run it again").

Node password: k3s registers each node name with a password (it keeps a hash
in kube-system/NAME.node-password.k3s) and rejects a node that comes back under
the same name with another one ("Node password rejected"). The password is
the only thing that stops a holder of the agent token from registering under
a name that is not its own and taking that node's kubelet identity.

  - The jumphost's password is an HMAC keyed by the rack's (server) token,
    which no Pi and no holder of the agent token ever has, so nobody on the
    rack network can register as the jumphost and read the Secrets of the pods
    placed there. It is written only when the password file is
    missing, never replaced: a token rotation (k3s token rotate, README
    "Rotating the token") changes the key, and a new password would no longer
    match the hash the datastore holds, so the jumphost's own node would be
    rejected. A re-flashed jumphost starts with a new datastore and writes a
    fresh one. (To reset it on a live rack: delete the password file and
    kube-system/JUMPHOST.node-password.k3s, then re-run the agent.)
  - A Pi's password is derived from the rack and node names only, and
    rewritten at every run: Pis boot one shared root, keep k3s's configuration in
    RAM when netbooted and get one agent token for the whole rack, so there
    is no per-Pi secret to key it with, and a replaced or power-cycled Pi
    must present the same password under the same name. This gives up, on
    purpose, k3s's guard between Pis: a holder of the agent token can
    register under any Pi name of the rack (and so run that Pi's pods and see
    what they are given). It cannot register as the jumphost, whose password
    it cannot compute.
"""

import hashlib
import hmac
import platform
import shutil
from pathlib import Path

from firstboot import k3s_bundle_files as bundle_files
from firstboot import k3s_ca, k3s_store, k3s_versions
from firstboot.errors import RackbootError
from firstboot.layout import MACHINE, Layout, Role
from firstboot.system import ensure_running, place, systemctl

LINKS = ("kubectl", "crictl", "ctr")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
SYSTEM_BIN_PATH = "/usr/bin:/bin"   # install.sh links kubectl etc. unless the distribution has its own there

# As install.sh writes it, less NetworkManager's cloud-setup check (the images
# have no NetworkManager). /etc/default/%N is install.sh's (and nothing of rackboot's).
UNIT = """\
# k3s {command}. Written by rackboot's first-boot agent (as k3s's install.sh would).
[Unit]
Description=Lightweight Kubernetes
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-{units}/%N.service.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart={bin_dir}/k3s {command}
"""


def service_name(role: Role) -> str:
    return "k3s.service" if role is Role.JUMPHOST else "k3s-agent.service"


def unit_text(role: Role) -> bytes:
    return UNIT.format(command="server" if role is Role.JUMPHOST else "agent",
                       units=MACHINE.units, bin_dir=MACHINE.bin_dir).encode()


def machine_arch() -> str:
    machine = platform.machine()
    if machine not in ARCHES:
        raise RackbootError(f"k3s has no build for this machine's architecture ({machine})")
    return ARCHES[machine]


def find_bundle(layout: Layout, version: str, arch: str) -> tuple[Path, Path]:
    """The binary and images for arch of version's bundle, the image's or a
    pushed one (firstboot/k3s_store.py), checked against its checksums as the
    build host checked them (firstboot/k3s_bundle_files.py)."""
    bundle = k3s_store.locate(layout, version)
    if bundle is None:
        present = k3s_store.versions(layout)
        raise RackbootError(
            f"k3s {version}: not on this machine ({layout.k3s_bundle(version)} missing, none pushed; it has "
            f"{', '.join(present) or 'no k3s bundle'})",
            hint="push it with the rack's bundle (./build.py push PROFILE --to HOST --k3s-bundle DIR, the "
                 "DIR ./build.py fetch-k3s VERSION -o DIR wrote), build the image with --k3s-bundle DIR, "
                 "or set k3s.version in the profile to one it has")
    try:
        bundle_files.check_arch(bundle, arch)
    except bundle_files.BundleFileError as err:
        raise _bundle_error(err, bundle_files.checksums_name(arch)) from None
    return bundle / bundle_files.binary_name(arch), bundle / bundle_files.images_name(arch)


def _bundle_error(err: bundle_files.BundleFileError, sums_name: str) -> RackbootError:
    Problem = bundle_files.Problem
    if err.problem is Problem.MISMATCH:
        return RackbootError(f"{err.path}: does not match {sums_name} (corrupt image?)",
                             hint="reflash the image, or rebuild it with a freshly fetched bundle")
    if err.problem is Problem.DAMAGED:
        return RackbootError(str(err), hint="the image's k3s bundle is damaged; reflash or rebuild the image")
    return RackbootError(f"{err} (the image's k3s bundle)", hint="the image's k3s bundle is incomplete; rebuild it")


def node_password(rack: str, node: str) -> bytes:
    """A Pi's password: public names only (see the module's docstring)."""
    return hashlib.sha256(f"rackboot k3s node password\0{rack}\0{node}".encode()).hexdigest().encode()


def server_node_password(rack_token: bytes, rack: str, node: str) -> bytes:
    """The jumphost's password: keyed by the rack token, which no Pi holds.
    Domain-separated from the agent token (join.agent_token), the other HMAC
    keyed by it."""
    message = b"rackboot k3s server node password v1\0" + rack.encode() + b"\0" + node.encode() + b"\0"
    return hmac.new(rack_token, message, hashlib.sha256).hexdigest().encode()


def _install_node_password(layout: Layout, rack: str, role: Role, node: str) -> bool:
    if role is not Role.JUMPHOST:
        return place(node_password(rack, node) + b"\n", layout.node_password, 0o600)
    if layout.node_password.exists():
        return False      # kept across token rotations: the datastore holds its hash
    rack_token = layout.token_file.read_bytes().strip()
    return place(server_node_password(rack_token, rack, node) + b"\n", layout.node_password, 0o600)


def _install_files(layout: Layout, rack: str, role: Role, node: str, binary: Path, images: Path) -> list[str]:
    """The bundle's files, the config and the node password in place; what changed."""
    config = layout.k3s_config_source(rack, role, node)
    if not config.exists():
        raise RackbootError(f"{config}: the rack's k3s config is not in this image",
                            hint=f"rebuild the image with the profile of rack {rack}")
    if not layout.token_file.exists():
        raise RackbootError(f"{layout.token_file}: missing; the token step writes it")
    changed = []
    if place(binary, layout.bin_dir / "k3s", 0o755):
        changed.append("binary")
    for name in LINKS:   # install.sh links these unless the system has its own
        link = layout.bin_dir / name
        if not link.exists() and not shutil.which(name, path=SYSTEM_BIN_PATH):
            link.symlink_to("k3s")
    if place(images, layout.k3s_images / images.name, 0o644):
        changed.append("images")
    if place(config.read_bytes(), layout.k3s_config, 0o600):
        changed.append("config")
    if _install_node_password(layout, rack, role, node):
        changed.append("node-password")
    return changed


def install(layout: Layout, rack: str, role: Role, node: str, version: str, token_changed: bool) -> dict:
    """Install or upgrade k3s and (re)start it when anything changed."""
    arch = machine_arch()
    binary, images = find_bundle(layout, version, arch)
    ca = None
    if role is Role.JUMPHOST:     # before anything is placed: a refused skip leaves k3s as it is
        k3s_versions.check_upgrade(k3s_versions.installed_version(layout.bin_dir / "k3s"), version)
        ca = k3s_ca.install(layout, rack)     # the rack's own CA, if it has one, before k3s first starts
    changed = _install_files(layout, rack, role, node, binary, images)
    if ca and ca["placed"]:
        changed.append("cluster-ca")
    if token_changed:
        changed.append("token")
    unit = service_name(role)
    if place(unit_text(role), layout.unit(unit), 0o644):
        changed.append("unit")
        systemctl("daemon-reload")
    started = ensure_running(unit, restart=bool(changed))
    return {"version": version, "arch": arch, "service": unit, "changed": changed, "started": started}
