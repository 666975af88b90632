"""What rackboot lays over a Debian root filesystem, for the jumphost and for
the Pis' shared root alike: the agent with its Python libraries, every rack's
profile and rendered files, the k3s bundle; and what it takes away (machine
state that would make two machines booted from one image alike)."""

import os
import shutil
import sys
from pathlib import Path

from firstboot.errors import BadInput, RackbootError
from firstboot.layout import MACHINE, Layout, Role, rendered_key
from firstboot.profile import DEFAULTS_NAME, SCHEMA_PATH, RackProfile
from image import k3s_bundle, render, rootfs
from firstboot.commands import run

REPO = Path(__file__).resolve().parent.parent
AGENT_DIR = MACHINE.agent_dir.relative_to("/")   # the agent, its profiles: PYTHONPATH of the unit
RACKS_DIR = MACHINE.racks.relative_to("/")       # each rack's rendered files
# pip's platform tag for each Debian architecture the agent runs on.
WHEEL_PLATFORMS = {"amd64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}


def profiles_directory(profiles: list[RackProfile]) -> Path:
    """One image's racks share one directory: its defaults.yaml applies to all."""
    directories = {p.source.resolve().parent for p in profiles}
    if len(directories) != 1:
        raise BadInput("the racks of one image must come from one directory (they share its "
                       f"{DEFAULTS_NAME}); got {', '.join(sorted(map(str, directories)))}")
    return directories.pop()


def profile_files(profiles: list[RackProfile]) -> dict[Path, Path]:
    """What install_profiles copies: each profile, its directory's defaults
    and each manifest -> its path relative to that directory, inside which
    every one of them must be (build.py's preflight asks this first)."""
    source_dir = profiles_directory(profiles)
    files = [p.source.resolve() for p in profiles] + [m for p in profiles for m in p.manifests]
    if (source_dir / DEFAULTS_NAME).exists():
        files.append(source_dir / DEFAULTS_NAME)
    relative = {}
    for path in files:
        try:
            relative[path] = path.relative_to(source_dir)
        except ValueError:
            raise BadInput(f"{path}: manifests that go into an image must be inside {source_dir}") from None
    return relative


def install_profiles(profiles: list[RackProfile], tree: Path) -> None:
    """The profiles, their defaults, schema and manifests, at the same relative paths."""
    files = profile_files(profiles)
    target = Layout(tree).profiles
    target.mkdir(parents=True)
    shutil.copyfile(SCHEMA_PATH, target / "schema.json")
    for path, relative in files.items():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)


# The agent's Google and Kubernetes client libraries, installed from PyPI as
# wheels for the image's interpreter at the versions requirements.txt pins:
# one consistent set (google-auth, urllib3, protobuf, ...) that the agent puts
# first on its path.
PYPI_AGENT_PACKAGES = ("google-cloud-secret-manager", "google-cloud-storage", "google-cloud-kms",
                       "cryptography", "kubernetes")


def _pinned(package: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == package:
            return line.strip()
    raise RackbootError(f"requirements.txt does not pin {package}")


def install_agent(tree: Path, arch: str) -> None:
    shutil.copytree(REPO / "firstboot", tree / AGENT_DIR / "firstboot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    python = sorted((tree / "usr/lib").glob("python3.[0-9]*"))[-1].name.removeprefix("python")
    site_packages = Layout(tree).site_packages
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--target", site_packages, "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", "--platform", WHEEL_PLATFORMS[arch],
         *map(_pinned, PYPI_AGENT_PACKAGES)],
         hint="the image build needs PyPI for the agent's Secret Manager client")
    compile_like_the_machine(tree, site_packages, python, arch)


def compile_like_the_machine(tree: Path, directory: Path, python: str, arch: str) -> None:
    """Byte code for directory as the machine's python writes it: named by
    the machine's paths (pip --target compiles in a temporary directory,
    whose name would end up in every file), and checked by hash rather than
    the sources' times (the same bytes from every build;
    image/reproducible.py). Byte code is the interpreter version's own, so
    when this python is another version (Debian 13's 3.13 from a Debian 12
    host) the machine's interpreter writes it, run in the tree (arm64 under
    qemu-user, as mmdebstrap ran it). Not left to the machine: the Pis'
    shared root is read-only under a tmpfs, so each Pi would compile these
    libraries again at every boot."""
    options = ["-q", "--invalidation-mode", "checked-hash"]
    seeded = {"PYTHONHASHSEED": "0"}     # sets in constants, marshalled in hash order
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python:
        run([sys.executable, "-m", "compileall", *options, "-j", "0", "-s", tree, "-p", "/", directory], env=seeded)
        return
    rootfs.ensure_foreign_arch(arch)
    # One process: workers need a /dev/shm the bare tree does not have mounted.
    run(["chroot", tree, f"/usr/bin/python{python}", "-m", "compileall", *options,
         "/" / directory.relative_to(tree)], env=seeded)


def install_racks(rendered: dict[str, render.RenderedTree], tree: Path) -> None:
    for rack, files in rendered.items():
        render.write_tree(files, tree / RACKS_DIR / rack)


def shared_units(rendered: dict[str, render.RenderedTree], role: str, names: tuple[str, ...]) -> dict[str, str]:
    """Units that the image carries for every rack (the agent's own, ...),
    name -> text: each must render the same for all of the image's racks
    (build.py's preflight asks this first)."""
    shared = {}
    for name in names:
        key = rendered_key(Role(role), MACHINE.unit(name))
        texts = {files[key] for files in rendered.values() if key in files}
        if len(texts) != 1:
            raise BadInput(f"the racks of this image ({', '.join(sorted(rendered))}) need different {name} "
                           f"({len(texts)} versions); build one image per kind of rack")
        shared[name] = texts.pop()
    return shared


def install_units(rendered: dict[str, render.RenderedTree], tree: Path, role: str, names: tuple[str, ...]) -> None:
    for name, text in shared_units(rendered, role, names).items():
        Layout(tree).unit(name).write_text(text)


# Debian's sshd refuses to start without host keys, and strip_machine_state
# removes the image's. cloud-init makes them on a jumphost; this makes sure of
# them where it does not run (a Pi). The keys come before Debian's own check
# (sshd -t), which a drop-in's ExecStartPre= would otherwise follow. They are
# synced to disk at once: on a card-booted Pi, a power cut within the page
# cache's writeback delay (30 s) would otherwise leave empty key files, which
# ssh-keygen -A does not replace, and new keys or none on the next boot.
SSH_KEYGEN_DROPIN = """\
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/bin/sync --file-system /etc/ssh
ExecStartPre=/usr/sbin/sshd -t
"""


def make_ssh_host_keys_at_boot(tree: Path) -> None:
    dropin = tree / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "rackboot-host-keys.conf").write_text(SSH_KEYGEN_DROPIN)


# The Pis' ssh access (firstboot/pi_access.py): the jumphost's admin user,
# and an sshd that takes its keys and host key from files the Pi's
# rackboot-pi-access.service writes at boot. The shared root serves every
# rack of the image, so it holds no rack's keys and no Pi's host key.
ADMIN = "rackboot"
ADMIN_UID = 1000     # the first regular user: what cloud-init's useradd gives the jumphost's
ADMIN_GROUPS = "adm,sudo"
PI_ACCESS_UNIT = "rackboot-pi-access.service"

PI_ACCESS_UNIT_TEXT = f"""\
# rackboot Pi (image/payload.py): before sshd starts, the rack's admin keys
# and this Pi's own host key from its jumphost (firstboot/pi_access.py). A Pi
# that cannot get its key keeps the one it has or gets a fresh one.
[Unit]
Description=rackboot: this Pi's admin keys and ssh host key
Wants=network-online.target
After=network-online.target
# The agent and k3s start with the Pi's hostname, its node name, set.
Before=ssh.service rackboot-firstboot.service

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=PYTHONPATH={MACHINE.agent_dir}
ExecStart=/usr/bin/python3 -m firstboot pi-access
StandardOutput=journal+console
StandardError=journal+console
# The jumphost is asked for at most a minute (RACKBOOT_HOST_KEY_TIMEOUT).
TimeoutStartSec=3min

[Install]
WantedBy=multi-user.target
"""

# Replaces what make_ssh_host_keys_at_boot gives other machines: sshd waits
# for the Pi's key instead of making keys of every type at every boot.
PI_SSH_DROPIN = f"""\
[Unit]
Wants={PI_ACCESS_UNIT}
After={PI_ACCESS_UNIT}
"""

# First value wins in sshd_config, and Debian's includes sshd_config.d first.
PI_SSHD_CONFIG = f"""\
# rackboot Pi (image/payload.py). The one host key: the Pi's own, from its
# jumphost, the same at every boot. Keys of other types would be new at
# every boot of a netbooted Pi.
HostKey {MACHINE.ssh_host_key}
# The rack's admin keys, written at boot from the rack's profile; no
# other file (home directories) adds keys.
AuthorizedKeysFile {MACHINE.authorized_keys("%u")}
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
"""

# As cloud-init writes the jumphost user's sudo: "ALL=(ALL) NOPASSWD:ALL".
PI_SUDOERS = f"""\
# rackboot Pi (image/payload.py): the admin user, as on the jumphost
{ADMIN} ALL=(ALL) NOPASSWD:ALL
"""


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def add_admin_user(tree: Path) -> None:
    """The jumphost's admin user in tree, as cloud-init makes it there: its
    own group, adm and sudo, bash, a home, the password locked. useradd
    works on tree's files (--root) and runs nothing of tree's."""
    run(["useradd", "--root", tree, "--uid", str(ADMIN_UID), "--user-group", "--groups", ADMIN_GROUPS,
         "--shell", "/bin/bash", "--comment", "rackboot administrator", "--create-home", ADMIN],
        capture=True, hint=f"the Pis' root must have the groups {ADMIN_GROUPS} and no user {ADMIN}")
    run(["usermod", "--root", tree, "--lock", ADMIN], capture=True)


def install_pi_access(tree: Path) -> None:
    """The Pis' admin user, sudo, sshd's drop-in and the unit that gives
    sshd its keys at boot (enabled)."""
    layout = Layout(tree)
    add_admin_user(tree)
    _write(layout.sudoers_dropin, PI_SUDOERS, 0o440)
    _write(layout.sshd_dropin, PI_SSHD_CONFIG, 0o644)
    _write(layout.unit("ssh.service.d/rackboot-pi-access.conf"), PI_SSH_DROPIN, 0o644)
    _write(layout.unit(PI_ACCESS_UNIT), PI_ACCESS_UNIT_TEXT, 0o644)
    run(["systemctl", f"--root={tree}", "enable", PI_ACCESS_UNIT], capture=True)


def strip_machine_state(tree: Path) -> None:
    """Nothing that would make two machines booted from this image alike."""
    (tree / "etc/machine-id").write_text("")  # empty: systemd makes one at first boot
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(tree / "var/lib/cloud", ignore_errors=True)
    for log_file in (tree / "var/log").rglob("*"):
        if log_file.is_file():
            log_file.unlink()


def install_k3s(bundle, tree: Path, arch: str | None = None) -> None:
    """The k3s bundle's verified files (image/k3s_bundle.py), or only those
    for arch: nothing else that lies in the bundle's directory."""
    k3s_bundle.install(bundle, Layout(tree).k3s_bundle(bundle.version), arch)
