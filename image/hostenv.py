"""Make this machine able to run rackboot: Debian packages and a virtualenv.

Standard library only: it runs before any dependency is installed. Both README
commands (`./build.py ...` and `tests/run`) start here, so a fresh Debian
machine needs nothing installed by hand.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
REQUIREMENTS = REPO / "requirements.txt"
STAMP = VENV / "rackboot-requirements.sha256"

# What the builder and the tests run. Kept in one list so that the README's
# two commands and CI install exactly the same things. PYTHON_PACKAGES make
# the virtualenv (every verb needs its Python libraries); TOOL_PACKAGES are
# the tools that build and boot images, installed only for a verb that runs
# them (build.py's Verb.tools), after its input was checked.
PYTHON_PACKAGES = (
    "python3", "python3-venv", "python3-dev", "gcc", "pkg-config",
    "libsystemd-dev",      # systemd-python builds against it
)
TOOL_PACKAGES = (
    "systemd",             # systemd-analyze verify checks rendered units
    "dnsmasq-base",        # dnsmasq --test checks rendered netboot config
    "cloud-init",          # cloud-init schema / net-convert check rendered seeds
    # Building images: rootfs, filesystems, disk assembly, flashing aids.
    "mmdebstrap", "e2fsprogs", "dosfstools", "mtools", "genimage", "bmap-tools", "zstd",
    "squashfs-tools",      # the Pis' root in the jumphost image is a squashfs of its own
    # Booting them: QEMU with UEFI firmware.
    "qemu-system-x86", "ovmf",
    "qemu-system-arm",     # the virtual rack's Pis: arm64 virt machines
    # The Pis' arm64 root filesystem: mmdebstrap runs its packages under qemu-user.
    "qemu-user-static", "binfmt-support", "arch-test",
    # Testing: the agent on pretend machines (unshare, nsenter), the k3s
    # stand-in's certificates, ssh into booted images.
    "util-linux", "openssl", "openssh-client", "cpio",
    "fdisk",               # sfdisk writes the jumphost image's partition table and reads the images'
    "iproute2",            # network namespaces and veth links for dnsmasq's DHCP/TFTP tests
    "nfs-kernel-server",   # exportfs checks and loads a pretend jumphost's rendered exports
)
# Only tests/run installs these (never build.py): the operator commands'
# tests run a real sshd, with sudo, in a network namespace in front of a
# pretend jumphost. Debian's openssh-server also enables and starts the
# host's own ssh.service, which a workstation running build.py should not get.
# prometheus is for its promtool (the rack's prometheus configuration, alert
# rules and the agent's metrics file, tests/test_monitoring.py); where systemd
# runs, Debian's package also starts prometheus.service on port 9090, which no
# test uses (in a container, policy-rc.d keeps it stopped).
TEST_PACKAGES = ("openssh-server", "sudo", "prometheus")
HOST_PACKAGES = PYTHON_PACKAGES + TOOL_PACKAGES + TEST_PACKAGES
# Set to 1 to skip the set-up (a machine provisioned otherwise).
NO_BOOTSTRAP_ENV = "RACKBOOT_NO_BOOTSTRAP"
# Set across the re-execution into the venv: the set-up is finished there
# (the tools), and only there. A program started inside the venv (the tests)
# was set up by whoever made the venv.
STARTED_OUTSIDE_ENV = "RACKBOOT_STARTED_OUTSIDE_VENV"


def _say(message: str) -> None:
    print(f"rackboot setup: {message}", file=sys.stderr, flush=True)


def _missing_packages(packages: tuple[str, ...] = HOST_PACKAGES) -> list[str]:
    if not shutil.which("dpkg-query"):
        return []  # not Debian: trust the user to have provided the tools
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if " ii" in line}
    return [p for p in packages if p not in installed]


def _install_packages(packages: list[str]) -> None:
    if os.geteuid() != 0:
        sys.exit("rackboot setup: missing Debian packages: " + " ".join(packages)
                 + "\n  run as root, or first: sudo apt-get install " + " ".join(packages))
    _say("installing Debian packages: " + " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        # Their output goes to stderr: stdout carries only the venv's path
        # (tests/run reads it with $(...)).
        if subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env).returncode != 0:
            sys.exit(f"rackboot setup: '{' '.join(argv)}' failed; see its output above")


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def _ensure_venv() -> None:
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == _requirements_digest():
        return
    # Debian's interpreter, not whatever python3 is first on PATH: the venv
    # must match the python3-dev headers that systemd-python compiles against.
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    if not python.exists():
        _say(f"creating virtualenv {VENV}")
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    _say(f"installing Python dependencies from {REQUIREMENTS.name}")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS)], stdin=subprocess.DEVNULL, stdout=sys.stderr)
    if result.returncode != 0:
        sys.exit("rackboot setup: pip install failed; see its output above")
    STAMP.write_text(_requirements_digest() + "\n")


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def prepare(packages: tuple[str, ...] = HOST_PACKAGES) -> Path:
    """Install whatever is missing; return the venv's interpreter."""
    missing = _missing_packages(packages)
    if missing:
        _install_packages(missing)
    _ensure_venv()
    return VENV / "bin" / "python"


def _skipped() -> bool:
    return os.environ.get(NO_BOOTSTRAP_ENV) == "1"


def ensure_venv() -> None:
    """Make sure of the virtualenv (and the packages it needs), then
    re-execute this program inside it."""
    if in_venv() or _skipped():
        return
    python = prepare(PYTHON_PACKAGES)
    os.environ[STARTED_OUTSIDE_ENV] = "1"
    os.execv(str(python), [str(python), *sys.argv])


def ensure_tools() -> None:
    """Install the build and boot tools that are missing (no re-execution)."""
    if _skipped() or (in_venv() and os.environ.get(STARTED_OUTSIDE_ENV) != "1"):
        return
    missing = _missing_packages(TOOL_PACKAGES)
    if missing:
        _install_packages(missing)


if __name__ == "__main__":
    print(prepare())
