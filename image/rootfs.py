"""Root filesystems from Debian packages with mmdebstrap, cached by their inputs.

A rootfs depends only on the release, the architecture and the package set
(plus this module's CACHE_VERSION), never on rack profiles or the agent: those
are laid over it later. So changing a profile reuses the cached rootfs, and
the expensive part of a build runs once per package set.
"""

import hashlib
import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from firstboot.errors import RackbootError
from image import atomic, progress
from firstboot.commands import run

log = logging.getLogger("rackboot")

# Bump when the way a rootfs is made changes without the inputs changing.
# 2: the initramfs is generated once, at the end (see _initramfs_once).
CACHE_VERSION = 2
TOOL_DIVERTED = "/usr/sbin/update-initramfs"
# What RootfsSpec.copy_out may hold: absolute paths, with * for globs, and
# nothing else the shell would read (they go unquoted into a hook, to glob).
COPY_OUT_GLOB = re.compile(r"(/[A-Za-z0-9._*+-]+)+")
# The Debian release images are built from unless --release names another:
# Debian 13, stable since August 2025 (Debian 12's regular support ended).
DEFAULT_RELEASE = "trixie"

# The agent runs on Debian's python3. Debian provides its compiled and
# self-contained dependencies; the Google and Kubernetes client stack comes
# from PyPI instead (image/jumphost.py), because Debian's older google-auth
# would shadow the one google-cloud-secret-manager needs.
AGENT_PACKAGES = ("python3", "python3-yaml", "python3-jinja2", "python3-jsonschema",
                  "python3-netifaces", "python3-systemd")

JUMPHOST_PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "systemd", "systemd-sysv", "udev", "dbus",
    "systemd-boot-efi",                 # the ESP's boot loader is taken from the image itself
    "systemd-timesyncd",
    "systemd-resolved",                 # networkd's DNS= only reaches resolv.conf through it
    "cloud-init", "cloud-guest-utils",  # growpart: the root grows to fill the disk it is flashed to
    "openssh-server", "sudo", "iproute2", "iputils-ping", "ca-certificates", "less",
    "dnsmasq-base", "nfs-kernel-server",  # Pi netboot: DHCP/TFTP and the NFS root
    "zstd", "e2fsprogs", *AGENT_PACKAGES,
)


@dataclass(frozen=True)
class RootfsSpec:
    release: str
    arch: str
    packages: tuple[str, ...]
    # initramfs-tools' MODULES= (most, dep, netboot, list), set before the
    # kernel is installed; None keeps Debian's default (most).
    initramfs_modules: str | None = None
    # Paths (shell globs) copied out of the tree into the cache entry's copied/.
    copy_out: tuple[str, ...] = ()
    components: tuple[str, ...] = ("main",)
    # A directory laid over the empty tree before any package is installed
    # (initramfs-tools hooks and scripts, which the kernel's postinst uses).
    preseed_dir: Path | None = None

    def key(self) -> str:
        inputs = {"v": CACHE_VERSION, "release": self.release, "arch": self.arch,
                  "packages": sorted(self.packages), "initramfs_modules": self.initramfs_modules,
                  "copy_out": list(self.copy_out), "components": list(self.components),
                  "preseed": _tree_digest(self.preseed_dir) if self.preseed_dir else None}
        text = json.dumps(inputs, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tree_digest(directory: Path) -> str:
    """Names, modes and contents of every file under directory."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(directory)}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Rootfs:
    tarball: Path        # the whole tree, owners and modes intact
    boot: Path           # its /boot: kernel and initramfs, for the ESP or TFTP
    cached: bool


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rackboot"


def ensure_foreign_arch(arch: str) -> None:
    """mmdebstrap runs a foreign architecture's maintainer scripts under
    qemu-user, which needs binfmt_misc; on hosts without systemd running
    (containers, chroots) nothing registers it at boot, so do it here."""
    if run(["dpkg", "--print-architecture"], capture=True).stdout.strip() == arch:
        return
    if run(["arch-test", arch], capture=True, check=False).returncode == 0:
        return
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", binfmt], capture=True, check=False)
    run(["update-binfmts", "--enable"], capture=True, check=False)
    if run(["arch-test", arch], capture=True, check=False).returncode != 0:
        raise RackbootError(f"this machine cannot run {arch} programs (needed to build the {arch} root filesystem)",
                            hint="apt-get install qemu-user-static binfmt-support; "
                                 "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")


def _initramfs_once() -> list[str]:
    """mmdebstrap hooks that make the initramfs once, at the end.

    Installing a kernel makes its initramfs (the kernel's postinst) and makes
    it again (initramfs-tools' trigger, after every package that ships hooks):
    about 6 minutes each for arm64 under qemu-user. update-initramfs is
    diverted to a no-op while packages install, then put back and run once."""
    tool = shlex.quote(TOOL_DIVERTED)
    divert = f"dpkg-divert --quiet --local --rename --divert {shlex.quote(TOOL_DIVERTED + '.rackboot')}"
    return [
        f'--essential-hook=chroot "$1" {divert} --add {tool} && '
        f'printf "#!/bin/sh\\nexit 0\\n" > "$1"{tool} && chmod 755 "$1"{tool}',
        f'--customize-hook=rm -f "$1"{tool} && chroot "$1" {divert} --remove {tool} && '
        f'if [ -x "$1"{tool} ]; then chroot "$1" update-initramfs -c -k all; fi',
    ]


def mmdebstrap_hooks(spec: RootfsSpec, staging: Path) -> list[str]:
    """The hooks of spec's mmdebstrap run, which writes into staging. They are
    shell text (mmdebstrap runs them under sh, the chroot as $1; its special
    hooks, copy-out, split words as sh does): every path in them is quoted."""
    hooks = []
    if spec.preseed_dir:
        hooks.append(f'--setup-hook=cp -a {shlex.quote(f"{spec.preseed_dir}/.")} "$1/"')
    if spec.initramfs_modules:
        hooks.append('--setup-hook=mkdir -p "$1/etc/initramfs-tools/conf.d" && '
                     f'echo {shlex.quote(f"MODULES={spec.initramfs_modules}")} '
                     '> "$1/etc/initramfs-tools/conf.d/rackboot"')
    hooks += _initramfs_once()
    if spec.copy_out:
        copied = shlex.quote(str(staging / "copied"))
        # The chroot quoted, the paths not: they are this module's globs (COPY_OUT_GLOB).
        for path in spec.copy_out:
            if not COPY_OUT_GLOB.fullmatch(path):
                raise ValueError(f"copy_out: {path!r} is not a plain absolute path or glob")
        sources = " ".join(f'"$1"{path}' for path in spec.copy_out)
        hooks.append(f'--customize-hook=mkdir -p {copied} && cp -a {sources} {copied}/')
    hooks.append(f"--customize-hook=copy-out /boot {shlex.quote(str(staging))}")
    return hooks


def build(spec: RootfsSpec, cache_dir: Path, use_cache: bool = True) -> Rootfs:
    entry = cache_dir / f"rootfs-{spec.release}-{spec.arch}-{spec.key()}"
    tarball, boot = entry / "rootfs.tar", entry / "boot"
    if use_cache and (entry / "complete").exists():
        log.info("  reusing cached root filesystem %s", entry)
        return Rootfs(tarball, boot, cached=True)
    ensure_foreign_arch(spec.arch)
    with atomic.staged_directory(entry) as staging:
        with progress.step(f"mmdebstrap {spec.release} {spec.arch} ({len(spec.packages)} packages)"):
            run(["mmdebstrap", "--variant=minbase", "--mode=root", f"--architectures={spec.arch}",
                 f"--components={','.join(spec.components)}", *mmdebstrap_hooks(spec, staging),
                 "--include=" + ",".join(spec.packages),
                 # No man pages or docs (copyrights stay): smaller image, same function.
                 "--dpkgopt=path-exclude=/usr/share/man/*",
                 "--dpkgopt=path-exclude=/usr/share/doc/*",
                 "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                 spec.release, str(staging / "rootfs.tar")], stream=True)
        (staging / "complete").write_text(spec.key() + "\n")
    return Rootfs(tarball, boot, cached=False)


def kernel_and_initrd(rootfs: Rootfs) -> tuple[Path, Path]:
    kernels = sorted(rootfs.boot.glob("vmlinuz-*"))
    initrds = sorted(rootfs.boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RackbootError(f"no kernel or initramfs in {rootfs.boot}",
                            hint="rebuild the root filesystem with --no-cache")
    return kernels[-1], initrds[-1]
