"""The SD-card image for Raspberry Pis that boot locally instead of over the
network: the same system as the netbooted Pis' shared root, on the card.

    render -> Pi rootfs (arm64, cached) -> Pi root (image/netboot.py) + SD overlay
           -> boot partition (FAT) + ext4 root -> MBR (genimage) -> sha256, bmap, [zstd]

    partition 1, FAT32, bootable    start4.elf, fixup4.dat, device trees, vmlinuz,
                                    initrd.img, config.txt (as the TFTP tree's) and
                                    cmdline.txt (templates/pi/sdcard/: root=LABEL=rackboot-pi)
    partition 2, ext4 rackboot-pi   the Pi root, writable; it grows to fill the card at
                                    boot, and /var/lib/rancher stays on it

The Pi 4's boot ROM reads only MBR cards with a FAT boot partition first.
What is laid over the netboot root is in image/pi-sdcard/: an fstab, DHCP on
eth0 by systemd-networkd (a netbooted Pi's kernel configures its port itself)
and the unit that grows the root. A Pi finds its name on the card as on the
network, by its serial or MAC in the profile: one card image serves every Pi
of the rack, and a replaced Pi needs a card written after its profile entry
was changed.
"""

import os
import shutil
import tempfile
from pathlib import Path

from firstboot.errors import BadInput
from firstboot.profile import RackProfile
from image import atomic, disk, netboot, progress, render, rootfs
from firstboot.commands import run

IMAGE_NAME = "pi-sdcard.img"
ROOT_LABEL = "rackboot-pi"      # templates/pi/sdcard/cmdline.txt.j2 and image/pi-sdcard/etc/fstab name it
BOOT_LABEL = "RPI-BOOT"
BOOT_SIZE_MB = 256
SD_OVERLAY = Path(__file__).parent / "pi-sdcard"
SD_UNITS = ("systemd-networkd.service", "rackboot-grow-root.service")

# The Pi 4's boot ROM wants the FAT boot partition first in an MBR (type 0x0c,
# FAT32 with LBA). 4 MiB alignment suits SD cards' erase blocks.
GENIMAGE_CONFIG = """\
image boot.vfat {{
  vfat {{
    label = "{boot_label}"
    extraargs = "-F 32"
  }}
  size = {boot_size}M
}}
image {name} {{
  hdimage {{
    partition-table-type = "mbr"
    align = 4M
  }}
  partition boot {{
    partition-type = 0xC
    bootable = "true"
    image = "boot.vfat"
  }}
  partition root {{
    partition-type = 0x83
    image = "root.ext4"
  }}
}}
"""


def boot_partition_tree(profile: RackProfile, rendered: render.RenderedTree, files: netboot.PiBootFiles,
                        target: Path) -> None:
    """The boot partition's files: what a netbooted Pi fetches over TFTP, with
    the SD card's cmdline.txt."""
    target.mkdir(parents=True)
    for name, source in netboot.shared_boot_files(files).items():
        shutil.copyfile(source, target / name)
    netboot.write_rendered(rendered, "pi/tftp/config.txt", target / "config.txt")
    netboot.write_rendered(rendered, "pi/sdcard/cmdline.txt", target / "cmdline.txt")


def write_root(profile: RackProfile, rendered: render.RenderedTree, pi_rootfs: rootfs.Rootfs, target: Path,
               k3s_bundle=None) -> None:
    """target (new): the netboot root of this rack's Pis with the SD card's
    files laid over it and its units enabled."""
    netboot.write_pi_root([profile], {profile.rack: rendered}, pi_rootfs, target, (k3s_bundle,) if k3s_bundle else ())
    for source in sorted(p for p in SD_OVERLAY.rglob("*") if p.is_file()):
        path = target / source.relative_to(SD_OVERLAY)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        # Modes set here, not taken from the checkout (whose umask may differ).
        os.chmod(path, 0o755 if os.access(source, os.X_OK) else 0o644)
    run(["systemctl", f"--root={target}", "enable", *SD_UNITS])


def require_pis(profile: RackProfile) -> None:
    if not profile.pis:
        raise BadInput(f"{profile.source}: rack {profile.rack} has no Pis, so there is no SD card to make",
                       hint="list the rack's Pis under pis: in its profile")


def build(profile: RackProfile, output: Path, release: str = rootfs.DEFAULT_RELEASE, cache_dir: Path | None = None,
          use_cache: bool = True, k3s_bundle=None, compress: bool = False) -> list[Path]:
    """output/pi-sdcard.img (with its sha256, bmap and optionally zstd) for
    profile's Pis; return the files written. Only a complete set lands."""
    require_pis(profile)
    rendered = render.render_rack(profile)
    with progress.step("Pi root filesystem (arm64)"):
        pi_rootfs = rootfs.build(netboot.pi_rootfs_spec(release), cache_dir or rootfs.default_cache_dir(),
                                 use_cache)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output, prefix=".pi-sdcard-") as work:
        work = Path(work)
        with progress.step("boot partition and Pi root"):
            boot_partition_tree(profile, rendered, netboot.boot_files(pi_rootfs), work / "boot")
            write_root(profile, rendered, pi_rootfs, work / "root", k3s_bundle)
            os.chmod(work / "root", 0o755)
        disk.make_ext4(work / "root", work / "root.ext4", ROOT_LABEL)
        with progress.step("assemble the MBR card image (genimage)"):
            disk.genimage(GENIMAGE_CONFIG.format(boot_label=BOOT_LABEL, boot_size=BOOT_SIZE_MB, name=IMAGE_NAME),
                          work / "boot", work, work / IMAGE_NAME)
        made = [work / IMAGE_NAME, *disk.flashing_files(work / IMAGE_NAME, compress)]
        return atomic.move_into(made, output)
