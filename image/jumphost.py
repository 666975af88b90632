"""The hot-swappable jumphost image: one x86-64 disk image for every rack.

    render -> rootfs (cached) -> unpack -> install rackboot -> strip machine state
           -> ESP + ext4 root -> GPT (genimage) -> sha256, bmap, [zstd]

The image carries every rack it serves (profiles, their Kubernetes YAML and
their rendered files) and no machine-specific state: a jumphost learns its
rack at first boot (firstboot/identify.py) and makes its own machine-id and
ssh host keys.
"""

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from firstboot.errors import BadInput, RackbootError
from firstboot.profile import DEFAULTS_NAME, SCHEMA_PATH, RackProfile
from image import disk, render, rootfs
from image import log as progress
from image.run import run

REPO = Path(__file__).resolve().parent.parent
AGENT_DIR = Path("usr/lib/rackboot")          # the agent, its profiles: PYTHONPATH of the unit
RACKS_DIR = Path("usr/share/rackboot/racks")  # each rack's rendered files
IMAGE_NAME = "jumphost.img"

CLOUD_CFG = """\
# rackboot: cloud-init reads only a NoCloud seed (a CIDATA disk or USB stick),
# or runs with no datasource, and renders networking for systemd-networkd.
datasource_list: [NoCloud, None]
# The image runs in C.UTF-8, which needs no generated locale; Debian's default
# (en_US.UTF-8) would need the locales package, which minbase lacks.
# cc_locale skips itself for a false-y string.
locale: "false"
# Without a seed cloud-init would also make a DSA host key, which OpenSSH
# no longer accepts.
ssh_genkeytypes: [ed25519, ecdsa, rsa]
system_info:
  network:
    renderers: [networkd]
"""

# Debian's sshd refuses to start without host keys. cloud-init makes them
# when it runs; this makes sure of them even when it does not.
SSH_KEYGEN_DROPIN = """\
[Service]
ExecStartPre=/usr/bin/ssh-keygen -A
"""

FSTAB = f"""\
PARTLABEL={disk.ROOT_LABEL} / ext4 defaults,noatime 0 1
PARTLABEL=esp /boot/efi vfat defaults,nofail,umask=0077 0 2
"""


@dataclass(frozen=True)
class ImageOptions:
    output: Path
    release: str = "bookworm"
    cache_dir: Path = rootfs.default_cache_dir()
    use_cache: bool = True
    compress: bool = False
    k3s_bundle: object = None   # image.k3s_bundle.Bundle, verified


def _profiles_directory(profiles: list[RackProfile]) -> Path:
    """One image's racks share one directory: its defaults.yaml applies to all."""
    directories = {p.source.resolve().parent for p in profiles}
    if len(directories) != 1:
        raise BadInput("the racks of one image must come from one directory (they share its "
                       f"{DEFAULTS_NAME}); got {', '.join(sorted(map(str, directories)))}")
    return directories.pop()


def _install_profiles(profiles: list[RackProfile], tree: Path) -> None:
    """The profiles, their defaults, schema and manifests, at the same relative paths."""
    source_dir = _profiles_directory(profiles)
    target = tree / AGENT_DIR / "rack-profiles"
    target.mkdir(parents=True)
    shutil.copyfile(SCHEMA_PATH, target / "schema.json")
    files = [p.source.resolve() for p in profiles] + [m for p in profiles for m in p.manifests]
    if (source_dir / DEFAULTS_NAME).exists():
        files.append(source_dir / DEFAULTS_NAME)
    for path in files:
        try:
            relative = path.relative_to(source_dir)
        except ValueError:
            raise BadInput(f"{path}: manifests that go into an image must be inside {source_dir}") from None
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


def _install_agent(tree: Path) -> None:
    shutil.copytree(REPO / "firstboot", tree / AGENT_DIR / "firstboot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    python = sorted((tree / "usr/lib").glob("python3.[0-9]*"))[-1].name.removeprefix("python")
    run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", tree / AGENT_DIR / "site-packages", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
         *map(_pinned, PYPI_AGENT_PACKAGES)],
         hint="the image build needs PyPI for the agent's Secret Manager client")


def _install_racks(rendered: dict[str, render.RenderedTree], tree: Path) -> None:
    for rack, files in rendered.items():
        render.write_tree(files, tree / RACKS_DIR / rack)
    # The agent's unit is the same for every rack: install and enable it.
    any_rack = next(iter(rendered.values()))
    unit = "etc/systemd/system/rackboot-firstboot.service"
    (tree / unit).write_text(any_rack[PurePosixPath("jumphost/rootfs", unit)])


def _configure(tree: Path) -> None:
    (tree / "etc/cloud/cloud.cfg.d/90-rackboot.cfg").write_text(CLOUD_CFG)
    dropin = tree / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "rackboot-host-keys.conf").write_text(SSH_KEYGEN_DROPIN)
    (tree / "etc/fstab").write_text(FSTAB)
    (tree / "boot/efi").mkdir(parents=True, exist_ok=True)
    (tree / "etc/hostname").write_text("rackboot\n")
    run(["systemctl", f"--root={tree}", "enable", "rackboot-firstboot.service",
         "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service"])


def _strip_machine_state(tree: Path) -> None:
    """Nothing that would make two jumphosts flashed from this image alike."""
    (tree / "etc/machine-id").write_text("")  # empty: systemd makes one at first boot
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(tree / "var/lib/cloud", ignore_errors=True)
    for log_file in (tree / "var/log").rglob("*"):
        if log_file.is_file():
            log_file.unlink()


def _install_k3s(bundle, tree: Path) -> None:
    target = tree / AGENT_DIR / "k3s" / bundle.version
    shutil.copytree(bundle.path, target)


def build(profiles: list[RackProfile], options: ImageOptions) -> list[Path]:
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    with progress.step("render every rack's files"):
        env = render.environment()
        rendered = {p.rack: render.render_rack(p, env) for p in profiles}
    spec = rootfs.RootfsSpec(options.release, "amd64", rootfs.JUMPHOST_PACKAGES)
    with progress.step("root filesystem"):
        base = rootfs.build(spec, options.cache_dir, options.use_cache)
    with tempfile.TemporaryDirectory(dir=output, prefix=".jumphost-") as work:
        work = Path(work)
        tree = work / "tree"
        tree.mkdir()
        with progress.step("unpack and install rackboot"):
            run(["tar", "-xf", base.tarball, "-C", tree, "--numeric-owner"])
            _install_agent(tree)
            _install_profiles(profiles, tree)
            _install_racks(rendered, tree)
            if options.k3s_bundle is not None:
                _install_k3s(options.k3s_bundle, tree)
            _configure(tree)
            _strip_machine_state(tree)
        kernel, initrd = rootfs.kernel_and_initrd(base)
        disk.esp_tree(work / "esp", tree / "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                      kernel, initrd, disk.KERNEL_CMDLINE)
        disk.assemble(tree, work / "esp", work / "disk", work / IMAGE_NAME)
        made = [work / IMAGE_NAME, *disk.flashing_files(work / IMAGE_NAME, options.compress)]
        # Only a complete set lands in the output directory.
        for path in made:
            path.replace(output / path.name)
    return [output / path.name for path in made]
