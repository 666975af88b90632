#!/usr/bin/env python3
"""Benchmark: the jumphost image build, measured in one run (needs root).

Prints:
  - a cold build (empty rootfs cache) against a bare mmdebstrap of the same
    package set into a tarball, the least any Debian image build pays (ratio);
  - a rebuild after a profile-only change, in seconds and as a ratio to cold;
  - image size: raw (apparent), used (allocated blocks), zstd-compressed;
  - the Pis' root in it: its files' bytes against its squashfs image's.

Run: sudo .venv/bin/python tests/bench/bench_image.py   (about 6 minutes)
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot.profile import load_profiles  # noqa: E402
from image import jumphost, rootfs  # noqa: E402
from image import progress  # noqa: E402


def pi_root_sizes(image: Path, work: Path) -> tuple[int, int]:
    """The bytes of the Pis' root's regular files, and of its squashfs in the image."""
    from tests.lib.vm import dump_file, root_filesystem, squashfs_entries
    root = root_filesystem(image, work)
    squashfs = dump_file(root, "/usr/lib/rackboot/pi-root.squashfs", work / "pi-root.squashfs")
    root.unlink()
    files = sum(e["size"] for e in squashfs_entries(squashfs).values() if e["mode"].startswith("-"))
    return files, squashfs.stat().st_size


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
             "--include=" + ",".join(rootfs.JUMPHOST_PACKAGES), "bookworm", str(work / "bare.tar")],
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
        raw = image.stat().st_size
        used = image.stat().st_blocks * 512
        subprocess.run(["zstd", "-q", "-T0", "-10", str(image), "-o", str(work / "img.zst")], check=True)
        compressed = (work / "img.zst").stat().st_size
        pi_files, pi_squashfs = pi_root_sizes(image, work)

    print(f"bare mmdebstrap ({len(rootfs.JUMPHOST_PACKAGES)} packages)  {bare:7.1f} s   1.00x")
    print(f"cold image build                      {cold:7.1f} s  {cold / bare:5.2f}x bare")
    print(f"rebuild after a profile change        {rebuild:7.1f} s  {rebuild / cold:5.2f}x cold")
    mib = 1024 * 1024
    print(f"image size: raw {raw / mib:.0f} MiB, used {used / mib:.0f} MiB, "
          f"zstd -10 {compressed / mib:.0f} MiB")
    print(f"the Pis' root: {pi_files / mib:.0f} MiB of files in a {pi_squashfs / mib:.0f} MiB squashfs "
          f"({pi_files / pi_squashfs:.1f}x)")


if __name__ == "__main__":
    main()
