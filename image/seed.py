"""A NoCloud seed: a small FAT filesystem labelled CIDATA holding a rack's
user-data, meta-data and network-config. Put it on a USB stick (or attach it
as a second disk) beside a freshly flashed jumphost, and it becomes that rack's
jumphost."""

import tempfile
from pathlib import Path, PurePosixPath

from firstboot.profile import RackProfile
from image.render import render_rack
from image.run import run

SEED_FILES = ("user-data", "meta-data", "network-config")
SEED_KIB = 1024


def seed_image_name(profile: RackProfile) -> str:
    return f"seed-{profile.rack}.img"


def make_seed(profile: RackProfile, output_dir: Path) -> Path:
    files = render_rack(profile)
    target = output_dir / seed_image_name(profile)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".seed-") as work:
        work = Path(work)
        for name in SEED_FILES:
            (work / name).write_text(files[PurePosixPath("jumphost/seed", name)])
        staging = work / "seed.img"
        run(["mkfs.vfat", "-n", "CIDATA", "-C", staging, str(SEED_KIB)])
        run(["mcopy", "-i", staging, *(work / name for name in SEED_FILES), "::/"])
        staging.replace(target)
    return target
