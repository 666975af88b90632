"""Disk images: an EFI system partition and an ext4 root in a GPT, with the
files people need to flash it safely (sha256, bmap: image/flashing.py).
Each filesystem is written straight into the image where its partition is
(mke2fs at an offset; the small ESP copied in by its data), then sfdisk
writes the table: no 3 GB filesystem image is made apart and copied.
image/sdcard.py assembles the Pi's SD card from the same parts (genimage).

Given a reproducible.Stamp, every identifier and time in them is the
stamp's: the same inputs give the same bytes (image/reproducible.py)."""

import os
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
# The GPT's layout, as genimage laid it out before (align = 1M): the ESP at
# 1 MiB, the root right after it, the backup table in the disk's last 40
# sectors. Partition types: EFI system, Linux filesystem.
SECTOR = 512
ESP_START = 1 << 20
GPT_BACKUP_BYTES = 40 * SECTOR
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def esp_tree(esp: Path, bootloader: Path) -> None:
    """systemd-boot as the removable-media loader, so any UEFI firmware boots
    it with no NVRAM entry: the disk is all there is to a jumphost. Kernels
    and their entries are the machine's own hook's (image/esp_kernel.py):
    the default is the newest rackboot-VERSION entry."""
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "loader/entries").mkdir(parents=True)
    shutil.copyfile(bootloader, esp / "EFI/BOOT/BOOTX64.EFI")
    (esp / "loader/loader.conf").write_text("default rackboot-*\ntimeout 0\neditor no\n")


def ext4_megabytes(tree: Path) -> int:
    """The root filesystem's size for tree: room for logs, k3s state and
    updates until the machine grows the root to fill the disk it is flashed
    to (growpart), in whole 64 MiB."""
    used = int(run(["du", "-s", "--block-size=1M", str(tree)], capture=True).stdout.split()[0])
    return (used * 13 // 10 + 1024 + 63) // 64 * 64


def make_ext4(tree: Path, target: Path, label: str, stamp: Stamp | None = None,
              offset: int = 0, size_mb: int | None = None, features: tuple[str, ...] = ()) -> None:
    """tree -> an ext4 filesystem labelled label in target (at byte offset
    of it, which must then be as large as offset + size_mb MiB: a disk image
    gets its root written in place, not made apart and copied in). With a
    stamp: its UUID, hash seed and times. features: mke2fs -O's, beside the default ones."""
    size = size_mb or ext4_megabytes(tree)
    extended = [f"offset={offset}"] if offset else []
    named = ["-L", label, *(["-O", ",".join(features)] if features else [])]
    with progress.step(f"make the {size} MiB ext4 root filesystem"):
        if stamp is None:
            run(["mke2fs", "-q", "-t", "ext4", *named, *_extended(extended), "-d", tree, target, f"{size}M"])
            return
        clamp_mtimes(tree, stamp.epoch)
        identity, seed = ext4_identity(stamp, label)
        run(["mke2fs", "-q", "-t", "ext4", *named, *identity, *_extended([*extended, seed]), "-d", tree,
             target, f"{size}M"], env={"E2FSPROGS_FAKE_TIME": str(stamp.epoch)})
        settle_inode_times(filesystem_at(target, offset), stamp.epoch)


def _extended(options: list[str]) -> list[str]:
    return ["-E", ",".join(options)] if options else []


def filesystem_at(target: Path, offset: int) -> str:
    """How e2fsprogs' tools (dumpe2fs, debugfs) name a filesystem at offset
    of a file: their I/O layer reads options after a '?' in the name."""
    if "?" in str(target):
        raise ValueError(f"{target}: e2fsprogs would read what follows '?' in the name as options")
    return f"{target}?offset={offset}" if offset else str(target)


def ext4_identity(stamp: Stamp, label: str) -> tuple[list[str], str]:
    """mke2fs's options for the filesystem's UUID, and its extended option
    for its directories' hash seed (which orders their htree indexes), both
    derived from the stamp."""
    return ["-U", stamp.uuid(f"ext4:{label}")], f"hash_seed={stamp.uuid(f'ext4-hash-seed:{label}')}"


def used_inodes(filesystem: Path | str) -> list[int]:
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


def settle_inode_times(filesystem: Path | str, epoch: int) -> None:
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


def assemble(tree: Path, esp: Path, work: Path, output: Path, stamp: Stamp, make_root=None) -> None:
    """tree -> the ext4 root and esp -> the ESP, both written into output
    (a GPT raw image) where their partitions are, then the partition table.
    make_root: make_ext4's stand-in (image/ext4_layer.py), called as it."""
    work.mkdir(parents=True, exist_ok=True)
    root_mb = ext4_megabytes(tree)
    root_start = ESP_START + (ESP_SIZE_MB << 20)
    with output.open("wb") as image:        # all holes: what nothing writes stays unmapped
        image.truncate(root_start + (root_mb << 20) + GPT_BACKUP_BYTES)
    (make_root or make_ext4)(tree, output, ROOT_LABEL, stamp, offset=root_start, size_mb=root_mb)
    with progress.step("the EFI system partition"):
        make_vfat(esp, work / "esp.vfat", ESP_SIZE_MB, stamp)
        copy_into(work / "esp.vfat", output, ESP_START)
    with progress.step("the GPT partition table"):
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never",
             "--wipe-partitions", "never", output],
            capture=True, input=gpt_script(stamp, root_start, root_mb << 20))


def copy_into(source: Path, target: Path, offset: int) -> None:
    """source's data (not its holes) into target at offset."""
    size = source.stat().st_size
    with source.open("rb") as src, target.open("r+b") as dst:
        fd = src.fileno()
        for start, end in flashing.data_segments(fd, size):
            while start < end:
                copied = os.copy_file_range(fd, dst.fileno(), end - start, start, offset + start)
                if copied == 0:
                    raise OSError(f"{source}: ended at byte {start}, before its data did")
                start += copied


def gpt_script(stamp: Stamp, root_start: int, root_bytes: int) -> str:
    """sfdisk's input for the image's GPT: the stamp's UUIDs, the layout above."""
    return (f"label: gpt\nlabel-id: {stamp.uuid('gpt-disk')}\nunit: sectors\nfirst-lba: {ESP_START // SECTOR}\n"
            f"start={ESP_START // SECTOR}, size={(ESP_SIZE_MB << 20) // SECTOR}, type={ESP_TYPE}, "
            f"uuid={stamp.uuid('gpt-partition:esp')}, name=esp\n"
            f"start={root_start // SECTOR}, size={root_bytes // SECTOR}, type={LINUX_TYPE}, "
            f"uuid={stamp.uuid(f'gpt-partition:{ROOT_LABEL}')}, name={ROOT_LABEL}\n")


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
