"""Disk images: an EFI system partition and an ext4 root in a GPT, assembled by
genimage, with the files people need to flash it safely (sha256, bmap).
image/sdcard.py assembles the Pi's SD card from the same parts."""

import shutil
from pathlib import Path

from image import progress
from firstboot.commands import run

ROOT_LABEL = "rackboot-root"   # partition label and filesystem label: root=PARTLABEL=...
ESP_SIZE_MB = 256
KERNEL_CMDLINE = (f"root=PARTLABEL={ROOT_LABEL} rw console=tty0 console=ttyS0,115200 "
                  # eth0 on any hardware, so one image fits every jumphost
                  "net.ifnames=0")

GENIMAGE_CONFIG = """\
image esp.vfat {{
  vfat {{
    label = "ESP"
  }}
  size = {esp_size}M
}}
image {name} {{
  hdimage {{
    partition-table-type = "gpt"
    align = 1M
  }}
  partition esp {{
    image = "esp.vfat"
    partition-type-uuid = "U"
  }}
  partition {root_label} {{
    image = "root.ext4"
    partition-type-uuid = "L"
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


def make_ext4(tree: Path, target: Path, label: str) -> None:
    """tree -> an ext4 filesystem image labelled label. Room for logs, k3s
    state and updates until the machine grows the root to fill the disk it is
    flashed to (growpart)."""
    size = (_tree_megabytes(tree) * 13 // 10 + 1024 + 63) // 64 * 64
    with progress.step(f"make the {size} MiB ext4 root filesystem"):
        run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", tree, target, f"{size}M"])


def genimage(config: str, rootpath: Path, work: Path, output: Path) -> None:
    """Assemble output from the images in work as config describes (genimage);
    rootpath is the tree of the config's vfat image."""
    (work / "genimage.cfg").write_text(config)
    run(["genimage", "--config", work / "genimage.cfg", "--rootpath", rootpath,
         "--tmppath", work / "genimage-tmp", "--inputpath", work, "--outputpath", work])
    (work / output.name).replace(output)


def assemble(tree: Path, esp: Path, work: Path, output: Path) -> None:
    """tree -> root.ext4, esp -> esp.vfat, both -> output (GPT raw image)."""
    work.mkdir(parents=True, exist_ok=True)
    make_ext4(tree, work / "root.ext4", ROOT_LABEL)
    with progress.step("assemble the GPT disk (genimage)"):
        genimage(GENIMAGE_CONFIG.format(esp_size=ESP_SIZE_MB, name=output.name, root_label=ROOT_LABEL),
                 esp, work, output)


def flashing_files(image: Path, compress: bool) -> list[Path]:
    """The sha256 and bmap beside the image, and optionally a zstd copy."""
    outputs = []
    with progress.step("checksum and block map"):
        digest = run(["sha256sum", image.name], capture=True, cwd=image.parent).stdout
        image.with_name(image.name + ".sha256").write_text(digest)
        run(["bmaptool", "create", "-o", image.with_name(image.name + ".bmap"), image])
        outputs += [image.with_name(image.name + ".sha256"), image.with_name(image.name + ".bmap")]
    if compress:
        with progress.step("compress (zstd)"):
            run(["zstd", "-q", "-f", "-T0", "-10", image, "-o", image.with_name(image.name + ".zst")])
            outputs.append(image.with_name(image.name + ".zst"))
    return outputs
