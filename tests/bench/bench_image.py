#!/usr/bin/env python3
"""Benchmark: the jumphost image build, measured in one run (needs root).

Prints:
  - a cold build (empty rootfs cache) against a bare mmdebstrap of the same
    package set into a tarball, the least any Debian image build pays (ratio);
  - a rebuild after a profile-only change, in seconds and as a ratio to cold;
  - whether the same inputs give the same image: the changed profile built
    again into another directory, both images' sha256 compared, and where
    they first differ if they do (partition, offset, and the ext4 root's file);
  - image size: raw (apparent), used (allocated blocks), zstd-compressed;
  - the Pis' root in it: its files' bytes against its squashfs image's.

Run: sudo .venv/bin/python tests/bench/bench_image.py   (about 8 minutes)
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot.profile import load_profiles  # noqa: E402
from image import disk, jumphost, rootfs  # noqa: E402
from image import progress  # noqa: E402


def pi_root_sizes(image: Path, work: Path) -> tuple[int, int]:
    """The bytes of the Pis' root's regular files, and of its squashfs in the image."""
    from tests.lib.vm import dump_file, root_filesystem, squashfs_entries
    root = root_filesystem(image, work)
    squashfs = dump_file(root, "/usr/lib/rackboot/pi-root.squashfs", work / "pi-root.squashfs")
    root.unlink()
    files = sum(e["size"] for e in squashfs_entries(squashfs).values() if e["mode"].startswith("-"))
    return files, squashfs.stat().st_size


def first_difference(first: Path, second: Path, chunk: int = 4 << 20) -> int | None:
    """The offset of the first byte where the two files differ, or None."""
    with first.open("rb") as a, second.open("rb") as b:
        offset = 0
        while True:
            left, right = a.read(chunk), b.read(chunk)
            if left != right:
                return offset + next((i for i, (x, y) in enumerate(zip(left, right)) if x != y),
                                     min(len(left), len(right)))
            if not left:
                return None
            offset += len(left)


def where(image: Path, offset: int, work: Path) -> str:
    """offset in image as a person reads it: the partition, and for the ext4
    root the file (or metadata) that block belongs to."""
    from tests.lib.vm import debugfs, extract_partition, partitions
    table = partitions(image)
    for number, part in enumerate(table["partitions"], start=1):
        start, size = part["start"] * 512, part["size"] * 512
        if start <= offset < start + size:
            inside = offset - start
            text = f"partition {number} ({part['name']}) at byte {inside}"
            if part["name"] == disk.ROOT_LABEL:
                filesystem = extract_partition(image, number, work / "root-a.ext4")
                inode = debugfs(filesystem, f"icheck {inside // 4096}").split()[-1]
                path = debugfs(filesystem, f"ncheck {inode}").splitlines()[-1] if inode.isdigit() else ""
                text += f", block {inside // 4096}: inode {inode} {path}".rstrip()
            return text
    return "the partition table (GPT) or the space outside the partitions"


def compare(first: Path, second: Path, work: Path) -> str:
    if first.with_name(first.name + ".sha256").read_text().split()[0] == \
            second.with_name(second.name + ".sha256").read_text().split()[0]:
        return "identical (sha256)"
    offset = first_difference(first, second)
    return f"DIFFERENT: first at byte {offset}: {where(first, offset, work)}"


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main() -> None:
    progress.setup()
    with tempfile.TemporaryDirectory(prefix="rackboot-bench-") as work:
        work = Path(work)
        bare = timed(lambda: subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
             "--include=" + ",".join(rootfs.JUMPHOST_PACKAGES), rootfs.DEFAULT_RELEASE, str(work / "bare.tar")],
            check=True, stdin=subprocess.DEVNULL))
        (work / "bare.tar").unlink()

        profiles_dir = work / "profiles"
        subprocess.run(["cp", "-r", str(REPO / "rack-profiles"), str(profiles_dir)], check=True)
        profile_path = profiles_dir / "example.yaml"
        options = jumphost.ImageOptions(output=work / "out", cache_dir=work / "cache")
        cold = timed(lambda: jumphost.build(load_profiles([profile_path]), options))

        profile_path.write_text(profile_path.read_text().replace(
            "description: Example rack", "description: Changed example rack"))
        rebuild = timed(lambda: jumphost.build(load_profiles([profile_path]), options))

        image = work / "out" / jumphost.IMAGE_NAME
        again = jumphost.ImageOptions(output=work / "again", cache_dir=work / "cache")
        jumphost.build(load_profiles([profile_path]), again)
        reproducible = compare(image, work / "again" / jumphost.IMAGE_NAME, work)
        shutil.rmtree(work / "again")
        raw = image.stat().st_size
        used = image.stat().st_blocks * 512
        subprocess.run(["zstd", "-q", "-T0", "-10", str(image), "-o", str(work / "img.zst")], check=True)
        compressed = (work / "img.zst").stat().st_size
        pi_files, pi_squashfs = pi_root_sizes(image, work)

    print(f"bare mmdebstrap ({len(rootfs.JUMPHOST_PACKAGES)} packages)  {bare:7.1f} s   1.00x")
    print(f"cold image build                      {cold:7.1f} s  {cold / bare:5.2f}x bare")
    print(f"rebuild after a profile change        {rebuild:7.1f} s  {rebuild / cold:5.2f}x cold")
    print(f"the same inputs built twice: {reproducible}")
    mib = 1024 * 1024
    print(f"image size: raw {raw / mib:.0f} MiB, used {used / mib:.0f} MiB, "
          f"zstd -10 {compressed / mib:.0f} MiB")
    print(f"the Pis' root: {pi_files / mib:.0f} MiB of files in a {pi_squashfs / mib:.0f} MiB squashfs "
          f"({pi_files / pi_squashfs:.1f}x)")


if __name__ == "__main__":
    main()
