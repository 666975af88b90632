"""The Raspberry Pi netboot tree (what a Pi 4's bootloader fetches over TFTP)
and the Pis' shared NFS root.

    render -> Pi rootfs (arm64, cached) -> TFTP tree + NFS root

    tftp/start4.elf, fixup4.dat          firmware, from Debian's raspi-firmware
    tftp/bcm2711-rpi-4-b.dtb, ...        device trees, from Debian's arm64 kernel
    tftp/vmlinuz, initrd.img             that kernel and its (NFS-capable) initramfs
    tftp/config.txt, cmdline.txt         rendered from the profile (templates/pi/tftp/)
    tftp/SERIAL/ or tftp/MAC/            one directory per Pi of the profile: links to the above

The bootloader asks for SERIAL/start4.elf first (or dc-a6-32-...-/start4.elf
with TFTP_PREFIX=2) and, finding it, takes every later file from that
directory; a Pi without one falls back to the root, boots the same system,
and its agent then says it is in no profile.

The NFS root is the Pi rootfs with rackboot laid over it (image/payload.py:
the agent, its arm64 Python libraries, every rack's profile and files) and
the Pi's units. It is one tree for every Pi of every rack in the image,
exported read-only; each Pi's initramfs puts a tmpfs overlay over it
(image/pi-initramfs/).

In the jumphost image that tree is a squashfs image of its own
(/usr/lib/rackboot/pi-root.squashfs), mounted read-only at
/srv/rackboot/pi-root by a mount unit the image enables. An NFS export must
be a filesystem of its own: with no_subtree_check the Linux NFS server
accepts a file handle for any file of the exported filesystem, so a
directory of the jumphost's root would give the segment its tokens and keys.
squashfs rather than a partition of its own: compressed (the image stays
about as small as before), no partition to size, and one file to swap.
"""

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from firstboot.layout import MACHINE, PI_ROOT_UNIT, Layout
from firstboot.errors import RackbootError
from firstboot.profile import BootDirBy, RackProfile
from image import bundle_seal, payload, pi_watch_units, render, reproducible, rootfs, tree_cache
from image import progress
from image.atomic import staged_directory
from firstboot.commands import run

log = logging.getLogger("rackboot")

# Firmware for the Pi 4 family (start4*/fixup4*) and the Pi 5's needs none
# (its bootloader is in EEPROM); bootcode.bin only for older Pis.
FIRMWARE = ("start4.elf", "fixup4.dat", "start4cd.elf", "fixup4cd.dat", "start4x.elf", "fixup4x.dat",
            "start4db.elf", "fixup4db.dat")
# Debian 12's kernel (6.1) and 13's (6.12) have the Pi 4 family's; the Pi 5's
# (bcm2712) comes with newer kernels and is taken when present.
DEVICE_TREES = ("bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb", "bcm2712-rpi-5-b.dtb")
REQUIRED = ("start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb")

# The Pi's packages: the same agent as the jumphost's (its node role), k3s's
# needs, the NFS client, and time sync (a Pi has no clock; TLS needs one).
PI_PACKAGES = (
    "linux-image-arm64", "initramfs-tools", "raspi-firmware",
    "systemd", "systemd-sysv", "udev", "dbus", "systemd-timesyncd",
    "nfs-common", "iproute2", "openssh-server", "sudo", "ca-certificates",
    # An SD-card Pi (image/sdcard.py) grows its root partition to the card.
    "cloud-guest-utils", "fdisk", "e2fsprogs",
    *rootfs.AGENT_PACKAGES,
)


# initramfs-tools hook and script that give the NFS root a tmpfs overlay.
PI_INITRAMFS = Path(__file__).parent / "pi-initramfs"


def pi_rootfs_spec(release: str) -> rootfs.RootfsSpec:
    # MODULES=netboot: the initramfs gets network drivers and NFS, not every
    # module (MODULES=most takes over 20 minutes under qemu-user here).
    # raspi-firmware is in Debian's non-free-firmware component.
    return rootfs.RootfsSpec(release, "arm64", PI_PACKAGES, initramfs_modules="netboot",
                             copy_out=("/usr/lib/raspi-firmware", "/usr/lib/linux-image-*"),
                             components=("main", "non-free-firmware"), preseed_dir=PI_INITRAMFS)


@dataclass(frozen=True)
class PiBootFiles:
    """What a Pi boots, out of the Pi root filesystem's build."""
    kernel: Path
    initrd: Path
    firmware: dict[str, Path]       # name in the TFTP tree -> file
    device_trees: dict[str, Path]


def boot_files(pi_rootfs: rootfs.Rootfs) -> PiBootFiles:
    kernel, initrd = rootfs.kernel_and_initrd(pi_rootfs)
    extra = pi_rootfs.boot.parent / "copied"
    firmware = {name: extra / "raspi-firmware" / name for name in FIRMWARE
                if (extra / "raspi-firmware" / name).exists()}
    trees = {}
    for tree_dir in sorted(extra.glob("linux-image-*/broadcom")):
        trees.update({name: tree_dir / name for name in DEVICE_TREES if (tree_dir / name).exists()})
    missing = [name for name in REQUIRED if name not in firmware and name not in trees]
    if missing:
        raise RackbootError(f"the Pi root filesystem lacks {', '.join(missing)} (looked in {extra})",
                            hint="rebuild it with --no-cache; raspi-firmware and linux-image-arm64 provide them")
    return PiBootFiles(kernel, initrd, firmware, trees)


def pi_directory(pi, by: BootDirBy) -> str | None:
    """The directory the Pi's bootloader asks for: its serial, or its MAC as
    dc-a6-32-01-36-c2 (TFTP_PREFIX=2)."""
    if by == BootDirBy.SERIAL:
        return pi.serial
    return pi.mac.replace(":", "-") if pi.mac else None


# Where the jumphost image keeps the Pis' files (firstboot/serve.py serves them).
PI_ROOT_IN_IMAGE = str(MACHINE.pi_root.relative_to("/"))               # the squashfs's mount point
PI_ROOT_IMAGE_IN_IMAGE = str(MACHINE.pi_root_image.relative_to("/"))  # the squashfs
PI_BOOT_IN_IMAGE = str(MACHINE.pi_boot.relative_to("/"))   # firmware, kernel, initramfs: one copy for all racks
PI_UNITS = ("rackboot-firstboot.service", "var-lib-rancher.mount")

# The jumphost's mount of the Pis' root. Ordered before the NFS server (which
# loads the export table when it starts) and the agent (whose serve step
# exports it); the export's `mp` option keeps the empty mount point from
# being exported should this ever fail. nodev, nosuid: nothing of the Pis'
# is a device or a privilege on the jumphost (the Pis' own mounts decide for them).
PI_ROOT_MOUNT_UNIT = f"""\
[Unit]
Description=The Raspberry Pis' shared root (read-only, exported over NFS)
Documentation=file:{MACHINE.agent_dir}/firstboot/serve.py
Before=nfs-server.service rackboot-firstboot.service

[Mount]
What={MACHINE.pi_root_image}
Where={MACHINE.pi_root}
Type=squashfs
Options=ro,loop,nodev,nosuid

[Install]
WantedBy=local-fs.target
"""


def shared_boot_files(files: PiBootFiles) -> dict[str, Path]:
    return {**files.firmware, **files.device_trees, "vmlinuz": files.kernel, "initrd.img": files.initrd}


def write_rendered(rendered: render.RenderedTree, key: str, path: Path) -> None:
    """A rendered file (config.txt, cmdline.txt) for the Pi firmware, ending in a newline."""
    text = rendered[PurePosixPath(key)]
    path.write_text(text if text.endswith("\n") else text + "\n")


def write_tftp_tree(profile: RackProfile, rendered: render.RenderedTree, files: PiBootFiles, output: Path,
                    shared_at: str | None = None) -> Path:
    """Write output/tftp for profile, replacing it whole; return it.
    shared_at: instead of copies, link the shared boot files to that directory
    (as the machine serving the tree sees it)."""
    final = output / "tftp"
    with staged_directory(final) as staging:
        shared = shared_boot_files(files)
        for name, source in shared.items():
            if shared_at:
                (staging / name).symlink_to(PurePosixPath(shared_at, name))
            else:
                shutil.copyfile(source, staging / name)
        for name in ("config.txt", "cmdline.txt"):
            write_rendered(rendered, f"pi/tftp/{name}", staging / name)
        names = sorted([*shared, "config.txt", "cmdline.txt"])
        for pi in profile.pis:
            directory = pi_directory(pi, profile.netboot.boot_dir_by)
            if directory is None:
                log.warning("  %s has no %s: it boots from the TFTP root", pi.name, profile.netboot.boot_dir_by)
                continue
            (staging / directory).mkdir()
            for name in names:       # relative links: the tree can move (into the image, to /srv)
                (staging / directory / name).symlink_to(Path("..") / name)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return final


def write_pi_root(profiles: list[RackProfile], rendered: dict[str, render.RenderedTree],
                  pi_rootfs: rootfs.Rootfs, target: Path, k3s_bundles=()) -> None:
    """target (new, or empty): the Pis' shared root, with rackboot laid over the rootfs."""
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise RackbootError(f"{target}: not empty; the Pis' root is written into a new directory")
    write_pi_os(pi_rootfs, target, k3s_bundles)
    write_pi_racks(profiles, rendered, target)


def write_pi_os(pi_rootfs: rootfs.Rootfs, target: Path, k3s_bundles=()) -> None:
    """What every rack's Pis have: Debian, the agent, k3s, ssh access (image/tree_cache.py)."""
    run(["tar", "-xf", pi_rootfs.tarball, "-C", target, "--numeric-owner"])
    payload.install_agent(target, "arm64")
    for bundle in k3s_bundles:      # each rack's version: a Pi runs the one its rack wants
        payload.install_k3s(bundle, target, "arm64")
    (target / "etc/hostname").write_text("rackboot-pi\n")
    payload.install_pi_access(target)
    pi_watch_units.install(target)
    run(["systemctl", f"--root={target}", "enable", "systemd-timesyncd.service"])
    payload.strip_machine_state(target)


def write_pi_racks(profiles: list[RackProfile], rendered: dict[str, render.RenderedTree], target: Path) -> None:
    """What is the racks' own in the Pis' root: profiles, rendered files, bundles, units."""
    payload.install_profiles(profiles, target)
    payload.install_racks(rendered, target)
    bundle_seal.seal_racks(profiles, target / payload.RACKS_DIR)
    payload.install_units({p.rack: rendered[p.rack] for p in profiles if p.pis}, target, "pi", PI_UNITS)
    run(["systemctl", f"--root={target}", "enable", *PI_UNITS])


# mksquashfs keeps owners, modes, hard links and extended attributes, and
# makes the export table NFS needs, by default. zstd: the squashfs of Debian
# 12's and 13's kernels has it, and it reads back faster than xz for the same size. The
# same tree gives the same bytes (image/reproducible.py): the superblock's
# creation time is SOURCE_DATE_EPOCH (mksquashfs 4.5 takes it from the
# environment, and refuses -mkfs-time beside it), and files newer than it are
# set back to it; older ones keep their times (Python checks Debian's byte
# code against them; the build's own is hash-checked). zstd level 4, not
# mksquashfs's default 15 nor the 6 of before: for the Pis' root (1.1 GB of
# files) on two cores 2.3 s at level 4, 4.7 s at 6 and 47 s at 15, for
# 270 MB, 259 MB and 240 MB; reading it back is as fast. It is the largest
# step of a profile-only rebuild (issue 14: at most 10 s).
SQUASHFS_ZSTD_LEVEL = 4


def make_squashfs(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    epoch = reproducible.source_date_epoch()
    reproducible.clamp_mtimes(source, epoch)
    run(["mksquashfs", source, target, "-comp", "zstd", "-Xcompression-level", str(SQUASHFS_ZSTD_LEVEL),
         "-noappend", "-no-progress"], env={"SOURCE_DATE_EPOCH": str(epoch)})
    os.chmod(target, 0o644)


def install_pi_root_mount(tree: Path) -> None:
    """The mount unit of the Pis' root, enabled, and its empty mount point."""
    (tree / PI_ROOT_IN_IMAGE).mkdir(parents=True, exist_ok=True)
    os.chmod(tree / PI_ROOT_IN_IMAGE, 0o755)
    unit = Layout(tree).unit(PI_ROOT_UNIT)
    unit.write_text(PI_ROOT_MOUNT_UNIT)
    os.chmod(unit, 0o644)
    run(["systemctl", f"--root={tree}", "enable", PI_ROOT_UNIT])


def install_into_image(profiles: list[RackProfile], rendered: dict[str, render.RenderedTree],
                       pi_rootfs: rootfs.Rootfs, tree: Path, k3s_bundles=(), cache_dir: Path | None = None) -> None:
    """The jumphost image's copy: the shared root (a squashfs, and its mount
    unit) and boot files once, and a TFTP tree per rack (its config.txt,
    cmdline.txt and Pi directories) whose boot files link to the shared ones.
    The root is written beside tree, never into it: only the squashfs goes in.
    With a cache_dir, the part of the root the same for every rack comes
    from its cache (image/tree_cache.py)."""
    files = boot_files(pi_rootfs)
    staging = Path(tempfile.mkdtemp(prefix=".pi-root.", dir=tree.parent))
    try:
        inputs = tree_cache.os_tree_inputs(pi_rootfs.tarball, "arm64", k3s_bundles)
        with tree_cache.prepared(cache_dir, "pi", inputs, staging / "pi-root",
                                 lambda target: write_pi_os(pi_rootfs, target, k3s_bundles)):
            write_pi_racks(profiles, rendered, staging / "pi-root")
            os.chmod(staging / "pi-root", 0o755)
            with progress.step("the Pis' root as a squashfs image"):
                make_squashfs(staging / "pi-root", tree / PI_ROOT_IMAGE_IN_IMAGE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    install_pi_root_mount(tree)
    shared = tree / PI_BOOT_IN_IMAGE
    shared.mkdir(parents=True)
    for name, source in shared_boot_files(files).items():
        shutil.copyfile(source, shared / name)
        os.chmod(shared / name, 0o644)
    for profile in profiles:
        if profile.pis:
            write_tftp_tree(profile, rendered[profile.rack], files, tree / payload.RACKS_DIR / profile.rack,
                            shared_at=f"/{PI_BOOT_IN_IMAGE}")


def build(profile: RackProfile, output: Path, release: str = rootfs.DEFAULT_RELEASE, cache_dir: Path | None = None,
          use_cache: bool = True, k3s_bundle=None) -> tuple[Path, Path]:
    """output/tftp and output/pi-root for profile's Pis; return both."""
    rendered = render.render_rack(profile)
    with progress.step("Pi root filesystem (arm64)"):
        pi_rootfs = rootfs.build(pi_rootfs_spec(release), cache_dir or rootfs.default_cache_dir(), use_cache)
    with progress.step(f"TFTP tree for {len(profile.pis)} Pis of rack {profile.rack}"):
        tftp = write_tftp_tree(profile, rendered, boot_files(pi_rootfs), output)
    with progress.step("Pi NFS root"):
        with staged_directory(output / "pi-root") as staging:
            write_pi_root([profile], {profile.rack: rendered}, pi_rootfs, staging, (k3s_bundle,) if k3s_bundle else ())
            os.chmod(staging, 0o755)
    return tftp, output / "pi-root"
