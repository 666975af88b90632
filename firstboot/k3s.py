"""k3s: install the image's k3s as the server (jumphost) or an agent (Pi),
the way k3s's install.sh does it air-gapped, and start it.

    /usr/lib/rackboot/k3s/VERSION/            the bundle in the image (binary, images, checksums)
    /usr/local/bin/k3s (+ kubectl, crictl, ctr links)
    /var/lib/rancher/k3s/agent/images/        the air-gap images k3s imports at start
    /etc/rancher/k3s/config.yaml              the rack's rendered config (token-file, labels, ...)
    /etc/rancher/node/password                this node's password (see below)
    /etc/systemd/system/k3s.service           or k3s-agent.service on a Pi

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
    placed there. It is written only when /etc/rancher/node/password is
    missing, never replaced: a token rotation (k3s token rotate, README
    "Rotating the token") changes the key, and a new password would no longer
    match the hash the datastore holds, so the jumphost's own node would be
    rejected. A re-flashed jumphost starts with a new datastore and writes a
    fresh one. (To reset it on a live rack: delete the password file and
    kube-system/JUMPHOST.node-password.k3s, then re-run the agent.)
  - A Pi's password is derived from the rack and node names only, and
    rewritten at every run: Pis boot one shared root, keep /etc/rancher in
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
import os
import platform
import shutil
from pathlib import Path

from firstboot import checksums
from firstboot.errors import RackbootError
from firstboot.system import place, sha256_file, systemctl

BUNDLES = Path(os.environ.get("RACKBOOT_K3S_BUNDLES", "/usr/lib/rackboot/k3s"))
RACKS = Path(os.environ.get("RACKBOOT_RACKS", "/usr/share/rackboot/racks"))
BIN_DIR = Path("/usr/local/bin")
CONFIG = Path("/etc/rancher/k3s/config.yaml")
TOKEN_FILE = Path("/etc/rancher/k3s/token")
NODE_PASSWORD = Path("/etc/rancher/node/password")
IMAGES_DIR = Path("/var/lib/rancher/k3s/agent/images")
DATASTORE = Path("/var/lib/rancher/k3s/server/db")
UNIT_DIR = Path("/etc/systemd/system")
KUBECONFIG = Path("/etc/rancher/k3s/k3s.yaml")
LINKS = ("kubectl", "crictl", "ctr")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}

# As install.sh writes it, less NetworkManager's cloud-setup check (the images
# have no NetworkManager).
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
EnvironmentFile=-/etc/systemd/system/%N.service.env
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
ExecStart=/usr/local/bin/k3s {command}
"""


def service_name(role: str) -> str:
    return "k3s.service" if role == "jumphost" else "k3s-agent.service"


def machine_arch() -> str:
    machine = platform.machine()
    if machine not in ARCHES:
        raise RackbootError(f"k3s has no build for this machine's architecture ({machine})")
    return ARCHES[machine]


def find_bundle(version: str, arch: str) -> tuple[Path, Path]:
    """The bundle's binary and images for arch, checked against its checksums."""
    bundle = BUNDLES / version
    if not bundle.is_dir():
        present = sorted(p.name for p in BUNDLES.iterdir()) if BUNDLES.is_dir() else []
        raise RackbootError(
            f"k3s {version}: not in this image ({bundle} missing; the image has "
            f"{', '.join(present) or 'no k3s bundle'})",
            hint="build the image with --k3s-bundle DIR holding that version "
                 "(./build.py fetch-k3s VERSION -o DIR), or set k3s.version in the profile to one it has")
    names = ("k3s" if arch == "amd64" else f"k3s-{arch}", f"k3s-airgap-images-{arch}.tar.zst")
    sums_file = bundle / f"sha256sum-{arch}.txt"
    try:
        sums = checksums.read(sums_file)     # as the build host read it (image/k3s_bundle.py)
    except OSError as err:
        raise RackbootError(f"{sums_file}: {err.strerror}", hint="the image's k3s bundle is incomplete; rebuild it")
    except checksums.ChecksumFileError as err:
        raise RackbootError(str(err), hint="the image's k3s bundle is damaged; reflash or rebuild the image")
    for name in names:
        path = bundle / name
        if path.is_symlink() or not path.is_file():
            raise RackbootError(f"{path}: missing from the image's k3s bundle (or not a regular file)",
                                hint="rebuild the image")
        if sums.get(name) != sha256_file(path):
            raise RackbootError(f"{path}: does not match {sums_file.name} (corrupt image?)",
                                hint="reflash the image, or rebuild it with a freshly fetched bundle")
    return bundle / names[0], bundle / names[1]


def config_source(rack: str, role: str, node: str) -> Path:
    if role == "jumphost":
        return RACKS / rack / "jumphost/rootfs/etc/rancher/k3s/config.yaml"
    return RACKS / rack / "pi/nodes" / node / "etc/rancher/k3s/config.yaml"


def node_password(rack: str, node: str) -> bytes:
    """A Pi's password: public names only (see the module's docstring)."""
    return hashlib.sha256(f"rackboot k3s node password\0{rack}\0{node}".encode()).hexdigest().encode()


def server_node_password(rack_token: bytes, rack: str, node: str) -> bytes:
    """The jumphost's password: keyed by the rack token, which no Pi holds.
    Domain-separated from the agent token (join.agent_token), the other HMAC
    keyed by it."""
    message = b"rackboot k3s server node password v1\0" + rack.encode() + b"\0" + node.encode() + b"\0"
    return hmac.new(rack_token, message, hashlib.sha256).hexdigest().encode()


def _install_node_password(rack: str, role: str, node: str) -> bool:
    if role != "jumphost":
        return place(node_password(rack, node) + b"\n", NODE_PASSWORD, 0o600)
    if NODE_PASSWORD.exists():
        return False      # kept across token rotations: the datastore holds its hash
    return place(server_node_password(TOKEN_FILE.read_bytes().strip(), rack, node) + b"\n", NODE_PASSWORD, 0o600)


def install(rack: str, role: str, node: str, version: str, token_changed: bool) -> dict:
    """Install or upgrade k3s and (re)start it when anything changed."""
    arch = machine_arch()
    binary, images = find_bundle(version, arch)
    config = config_source(rack, role, node)
    if not config.exists():
        raise RackbootError(f"{config}: the rack's k3s config is not in this image",
                            hint=f"rebuild the image with the profile of rack {rack}")
    if not TOKEN_FILE.exists():
        raise RackbootError(f"{TOKEN_FILE}: missing; the token step writes it")
    changed = []
    if place(binary, BIN_DIR / "k3s", 0o755):
        changed.append("binary")
    for name in LINKS:   # install.sh links these unless the system has its own
        link = BIN_DIR / name
        if not link.exists() and not shutil.which(name, path="/usr/bin:/bin"):
            link.symlink_to("k3s")
    if place(images, IMAGES_DIR / images.name, 0o644):
        changed.append("images")
    if place(config.read_bytes(), CONFIG, 0o600):
        changed.append("config")
    if _install_node_password(rack, role, node):
        changed.append("node-password")
    if token_changed:
        changed.append("token")
    unit = service_name(role)
    if place(UNIT.format(command="server" if role == "jumphost" else "agent").encode(), UNIT_DIR / unit, 0o644):
        changed.append("unit")
        systemctl("daemon-reload")
    systemctl("enable", unit)
    running = systemctl("is-active", "--quiet", unit, check=False).returncode == 0
    # --no-block: k3s's unit has no start timeout; the ready step waits, with one.
    if changed or not running:
        systemctl("restart" if running else "start", "--no-block", unit)
    return {"version": version, "arch": arch, "service": unit, "changed": changed,
            "started": "restarted" if changed and running else ("started" if not running else "unchanged")}

