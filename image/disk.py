"""Disk images: an EFI system partition and an ext4 root in a GPT, assembled by
genimage, with the files people need to flash it safely (sha256, bmap).
image/sdcard.py assembles the Pi's SD card from the same parts.

Given a reproducible.Stamp, every identifier and time in them is the
stamp's: the same inputs give the same bytes (image/reproducible.py)."""

import re
import shutil
from pathlib import Path

from image import flashing, progress
from image.reproducible import Stamp, clamp_mtimes
from firstboot.commands import run

ROOT_LABEL = "rackboot-root"   # partition label and filesystem label: root=PARTLABEL=...
ESP_SIZE_MB = 256
KERNEL_CMDLINE = (f"root=PARTLABEL={ROOT_LABEL} rw console=tty0 console=ttyS0,115200 "
                  # eth0 on any hardware, so one image fits every jumphost
                  "net.ifnames=0")

ESP_LABEL = "ESP"
# The ESP (esp.vfat, made_vfat) and the root (root.ext4) are made before;
# genimage only lays them out, with the stamp's UUIDs.
GENIMAGE_CONFIG = """\
image {name} {{
  hdimage {{
    partition-table-type = "gpt"
    align = 1M
    disk-uuid = "{disk_uuid}"
  }}
  partition esp {{
    image = "esp.vfat"
    partition-type-uuid = "U"
    partition-uuid = "{esp_uuid}"
  }}
  partition {root_label} {{
    image = "root.ext4"
    partition-type-uuid = "L"
    partition-uuid = "{root_uuid}"
  }}
}}
"""


def esp_tree(esp: Path, bootloader: Path) -> None:
    """systemd-boot as the removable-media loader, so any UEFI firmware boots
    it with no NVRAM entry: the disk is all there is to a jumphost. Kernels
    and their entries are the machine's own hook's (image/esp_kernel.py):
    the default is the newest rackboot-VERSION entry."""
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "loader/entries").mkdir(parents=True)
    shutil.copyfile(bootloader, esp / "EFI/BOOT/BOOTX64.EFI")
    (esp / "loader/loader.conf").write_text("default rackboot-*\ntimeout 0\neditor no\n")


def _tree_megabytes(tree: Path) -> int:
    out = run(["du", "-s", "--block-size=1M", str(tree)], capture=True).stdout
    return int(out.split()[0])


def make_ext4(tree: Path, target: Path, label: str, stamp: Stamp | None = None) -> None:
    """tree -> an ext4 filesystem image labelled label. Room for logs, k3s
    state and updates until the machine grows the root to fill the disk it is
    flashed to (growpart). With a stamp: its UUID, hash seed and times."""
    size = (_tree_megabytes(tree) * 13 // 10 + 1024 + 63) // 64 * 64
    with progress.step(f"make the {size} MiB ext4 root filesystem"):
        if stamp is None:
            run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", tree, target, f"{size}M"])
            return
        clamp_mtimes(tree, stamp.epoch)
        run(["mke2fs", "-q", "-t", "ext4", "-L", label, *ext4_identity(stamp, label), "-d", tree, target,
             f"{size}M"], env={"E2FSPROGS_FAKE_TIME": str(stamp.epoch)})
        settle_inode_times(target, stamp.epoch)


def ext4_identity(stamp: Stamp, label: str) -> list[str]:
    """mke2fs's options for the filesystem's UUID and its directories' hash
    seed (which orders their htree indexes), both derived from the stamp."""
    return ["-U", stamp.uuid(f"ext4:{label}"), "-E", f"hash_seed={stamp.uuid(f'ext4-hash-seed:{label}')}"]


def used_inodes(filesystem: Path) -> list[int]:
    """The inodes in use (by dumpe2fs's bitmaps): the root and every one
    from the first non-reserved inode on."""
    text = run(["dumpe2fs", filesystem], capture=True).stdout
    per_group = int(re.search(r"^Inodes per group:\s+(\d+)", text, re.M)[1])
    first = int(re.search(r"^First inode:\s+(\d+)", text, re.M)[1])
    free = set()
    for ranges in re.findall(r"^  Free inodes: ?([^\n]*)$", text, re.M):    # one line per group
        for part in filter(None, (r.strip() for r in ranges.split(","))):
            low, _, high = part.partition("-")
            free.update(range(int(low), int(high or low) + 1))
    groups = len(re.findall(r"^Group \d+:", text, re.M))
    return [2] + [i for i in range(first, groups * per_group + 1) if i not in free]


def settle_inode_times(filesystem: Path, epoch: int) -> None:
    """Set every used inode's access and change times to epoch. mke2fs -d
    (e2fsprogs 1.47.0, Debian 12) copies them from the source tree, where
    no tool can set a change time and reading a file sets its access time;
    modification times are the tree's own (clamped), creation times
    E2FSPROGS_FAKE_TIME's."""
    commands = "".join(f"sif <{inode}> {field} @{epoch}\n"
                       for inode in used_inodes(filesystem) for field in ("atime", "ctime"))
    # debugfs dates the superblock's last write by E2FSPROGS_FAKE_TIME too.
    run(["debugfs", "-w", "-f", "-", filesystem], capture=True, input=commands,
        env={"E2FSPROGS_FAKE_TIME": str(epoch)})


def make_vfat(tree: Path, target: Path, size_mb: int, stamp: Stamp) -> None:
    """tree -> a FAT filesystem image of size_mb labelled ESP_LABEL, with the
    stamp's volume id and times (mtools dates what it makes by
    SOURCE_DATE_EPOCH), its entries made in name order."""
    clamp_mtimes(tree, stamp.epoch)
    run(["mkfs.vfat", "--invariant", "-i", stamp.volume_id("esp"), "-n", ESP_LABEL, "-C", target,
         str(size_mb * 1024)], capture=True)
    for path in sorted(tree.rglob("*")):
        inside = "::/" + str(path.relative_to(tree))
        if path.is_dir():
            run(["mmd", "-i", target, inside], capture=True, env=stamp.env)
        else:   # -p -m: the file's attributes and modification time
            run(["mcopy", "-p", "-m", "-i", target, path, inside], capture=True, env=stamp.env)


def genimage(config: str, rootpath: Path, work: Path, output: Path) -> None:
    """Assemble output from the images in work as config describes (genimage);
    rootpath is the tree of the config's vfat image."""
    (work / "genimage.cfg").write_text(config)
    run(["genimage", "--config", work / "genimage.cfg", "--rootpath", rootpath,
         "--tmppath", work / "genimage-tmp", "--inputpath", work, "--outputpath", work])
    (work / output.name).replace(output)


def assemble(tree: Path, esp: Path, work: Path, output: Path, stamp: Stamp) -> None:
    """tree -> root.ext4, esp -> esp.vfat, both -> output (GPT raw image)."""
    work.mkdir(parents=True, exist_ok=True)
    make_ext4(tree, work / "root.ext4", ROOT_LABEL, stamp)
    with progress.step("the EFI system partition"):
        make_vfat(esp, work / "esp.vfat", ESP_SIZE_MB, stamp)
    with progress.step("assemble the GPT disk (genimage)"):
        genimage(gpt_config(output.name, stamp), esp, work, output)


def gpt_config(name: str, stamp: Stamp) -> str:
    return GENIMAGE_CONFIG.format(name=name, root_label=ROOT_LABEL, disk_uuid=stamp.uuid("gpt-disk"),
                                  esp_uuid=stamp.uuid("gpt-partition:esp"),
                                  root_uuid=stamp.uuid(f"gpt-partition:{ROOT_LABEL}"))


def flashing_files(image: Path, compress: bool) -> list[Path]:
    """The sha256 and bmap beside the image, and optionally a zstd copy."""
    outputs = []
    with progress.step("checksum and block map"):
        outputs += flashing.checksum_and_bmap(image)
    if compress:
        with progress.step("compress (zstd)"):
            run(["zstd", "-q", "-f", "-T0", "-10", image, "-o", image.with_name(image.name + ".zst")])
            outputs.append(image.with_name(image.name + ".zst"))
    return outputs
