"""The sha256 and block map made beside an image (image/flashing.py), checked
by the tools people flash with: sha256sum -c, and bmaptool, whose own
`create` must find the same ranges and checksums and whose `copy` must
accept the map and write the image's bytes."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from image import disk, flashing


@pytest.fixture(autouse=True)
def needs_bmaptool():
    if shutil.which("bmaptool") is None:
        pytest.skip("needs bmaptool (bmap-tools)")


def sparse_image(path: Path, size: int) -> Path:
    """Data, holes, data not on block boundaries, and a hole at the end."""
    with path.open("wb") as data:
        data.write(b"GPT" * 1000)
        data.seek(8 << 20)
        data.write(b"root" * 5000)
        data.seek((8 << 20) + 70000)       # a block away from the last write: one range or two
        data.write(b"x")
        data.seek(20 << 20)
        data.write(bytes(range(256)) * 64)
        data.truncate(size)
    return path


def ranges(bmap: Path) -> list[tuple[str, str]]:
    return re.findall(r'<Range chksum="([0-9a-f]+)"> ([0-9-]+) </Range>', bmap.read_text())


@pytest.mark.parametrize("size", [64 << 20, (64 << 20) + 1234])     # whole blocks, and a cut last block
def test_the_block_map_is_bmaptools_own_and_bmaptool_copies_by_it(tmp_path, size):
    image = sparse_image(tmp_path / "jumphost.img", size)
    made = disk.flashing_files(image, compress=False)
    assert made == [tmp_path / "jumphost.img.sha256", tmp_path / "jumphost.img.bmap"]
    subprocess.run(["bmaptool", "create", "-o", tmp_path / "theirs.bmap", image], check=True, capture_output=True)
    assert ranges(made[1]) == ranges(tmp_path / "theirs.bmap")
    for field in ("ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount", "ChecksumType"):
        pattern = rf"<{field}>\s*(\S+)\s*</{field}>"
        assert re.search(pattern, made[1].read_text())[1] == re.search(pattern, (tmp_path / "theirs.bmap").read_text())[1]
    copied = subprocess.run(["bmaptool", "copy", "--bmap", made[1], image, tmp_path / "device.img"],
                            capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "device.img").read_bytes() == image.read_bytes()
    check = subprocess.run(["sha256sum", "--check", "--strict", made[0].name], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "jumphost.img: OK\n", check.stdout + check.stderr


def test_bmaptool_refuses_the_map_of_other_bytes(tmp_path):
    image = sparse_image(tmp_path / "jumphost.img", 32 << 20)
    bmap = flashing.checksum_and_bmap(image)[1]
    with image.open("r+b") as data:     # a byte of a mapped block changed after the map was made
        data.seek(8 << 20)
        data.write(b"R")
    copied = subprocess.run(["bmaptool", "copy", "--bmap", bmap, image, tmp_path / "device.img"],
                            capture_output=True, text=True)
    assert copied.returncode != 0 and "checksum mismatch" in copied.stderr.lower(), copied.stderr


def test_an_image_of_holes_only_has_an_empty_map_and_the_zeros_digest(tmp_path):
    image = tmp_path / "empty.img"
    with image.open("wb") as data:
        data.truncate(3 << 20)
    checksum, bmap = flashing.checksum_and_bmap(image)
    expected = subprocess.run(["sha256sum", image], capture_output=True, text=True, check=True).stdout.split()[0]
    assert checksum.read_text() == f"{expected}  empty.img\n"
    assert ranges(bmap) == []
