"""Reproducible images (image/reproducible.py, image/disk.py): the same
inputs give the same bytes. The filesystems and the GPT are made here for
real, twice, from trees whose change and access times differ between the
two builds (as two build runs' trees do), and compared byte for byte; the
identifiers in them are read back with the filesystem tools. The whole
image built twice is tests/bench/bench_image.py's."""

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from firstboot.errors import BadInput
from image import disk, reproducible

EPOCH = 1_700_000_000
STAMP = reproducible.Stamp(EPOCH, "0" * 64)
TOOLS = ("mke2fs", "debugfs", "dumpe2fs", "e2fsck", "mkfs.vfat", "mcopy", "mmd", "genimage", "sfdisk")


def needs_tools():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (e2fsprogs, dosfstools, mtools, genimage, fdisk)")


def make_tree(root: Path) -> Path:
    """A small root: directories, a big directory (an htree index), a link,
    a file older than the epoch and files newer than it."""
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/hostname").write_text("rackboot\n")
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (root / "usr/lib/many").mkdir(parents=True)
    for number in range(300):
        (root / "usr/lib/many" / f"file-{number:03d}-{'x' * 40}").write_text(str(number))
    (root / "etc/old").write_text("from a package\n")
    os.utime(root / "etc/old", (EPOCH - 86400, EPOCH - 86400))
    (root / "etc/link").symlink_to("hostname")
    return root


def touch_everything(root: Path) -> None:
    """What differs between two build runs' trees: change times (a chmod
    to the same mode changes it), access times, and the clock."""
    time.sleep(1.1)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, path.stat().st_mode & 0o7777)
            path.read_bytes() if path.is_file() else None
            os.utime(path, (time.time(), os.stat(path).st_mtime))


def test_identifiers_derive_from_the_inputs_and_differ_by_purpose():
    same = reproducible.Stamp(EPOCH, "0" * 64)
    other = reproducible.Stamp(EPOCH, "1" * 64)
    assert STAMP.uuid("gpt-disk") == same.uuid("gpt-disk")
    assert STAMP.uuid("gpt-disk") != other.uuid("gpt-disk")
    assert STAMP.uuid("gpt-disk") != STAMP.uuid("gpt-partition:esp")
    parsed = uuid.UUID(STAMP.uuid("ext4:root"))
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(STAMP.volume_id("esp")) == 8 and int(STAMP.volume_id("esp"), 16) >= 0


def test_the_inputs_digest_follows_every_input(tmp_path):
    tree = make_tree(tmp_path / "racks")
    first = reproducible.inputs_digest({"racks": tree, "rootfs": ["abc"]})
    assert first == reproducible.inputs_digest({"rootfs": ["abc"], "racks": tree})
    touch_everything(tree)      # times are not inputs
    assert first == reproducible.inputs_digest({"racks": tree, "rootfs": ["abc"]})
    assert first != reproducible.inputs_digest({"racks": tree, "rootfs": ["abd"]})
    (tree / "etc/hostname").write_text("other\n")
    assert first != reproducible.inputs_digest({"racks": tree, "rootfs": ["abc"]})


def test_source_date_epoch_is_the_callers_or_this_checkouts_commit_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    assert reproducible.source_date_epoch() == 1234567890
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BadInput, match="SOURCE_DATE_EPOCH"):
        reproducible.source_date_epoch()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    committed = subprocess.run(["git", "-C", str(reproducible.REPO), "log", "-1", "--format=%ct"],
                               capture_output=True, text=True)
    expected = int(committed.stdout) if committed.returncode == 0 else reproducible.FALLBACK_EPOCH
    assert reproducible.source_date_epoch() == expected


def test_the_epoch_is_in_the_environment_only_while_the_build_runs(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with reproducible.epoch_in_environment(EPOCH):
        assert os.environ["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert "SOURCE_DATE_EPOCH" not in os.environ


def test_clamping_sets_back_only_what_is_newer_and_never_follows_links(tmp_path):
    tree = make_tree(tmp_path / "tree")
    outside = tmp_path / "outside"
    outside.write_text("not the tree's\n")
    (tree / "etc/escape").symlink_to(outside)
    before = outside.stat().st_mtime
    reproducible.clamp_mtimes(tree, EPOCH)
    assert (tree / "etc/hostname").stat().st_mtime == EPOCH
    assert tree.stat().st_mtime == EPOCH
    assert os.lstat(tree / "etc/escape").st_mtime == EPOCH
    assert (tree / "etc/old").stat().st_mtime == EPOCH - 86400       # older: kept
    assert outside.stat().st_mtime == before


def dumpe2fs_header(filesystem: Path) -> dict[str, str]:
    text = subprocess.run(["dumpe2fs", "-h", str(filesystem)], capture_output=True, text=True, check=True).stdout
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def test_ext4_the_same_tree_twice_gives_the_same_bytes_and_the_stamps_identity(tmp_path):
    needs_tools()
    tree = make_tree(tmp_path / "tree")
    disk.make_ext4(tree, tmp_path / "first.ext4", "rackboot-root", STAMP)
    touch_everything(tree)
    disk.make_ext4(tree, tmp_path / "second.ext4", "rackboot-root", STAMP)
    assert (tmp_path / "first.ext4").read_bytes() == (tmp_path / "second.ext4").read_bytes()
    header = dumpe2fs_header(tmp_path / "first.ext4")
    assert header["Filesystem UUID"] == STAMP.uuid("ext4:rackboot-root")
    assert header["Directory Hash Seed"] == STAMP.uuid("ext4-hash-seed:rackboot-root")
    check = subprocess.run(["e2fsck", "-fn", str(tmp_path / "first.ext4")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    stat = subprocess.run(["debugfs", "-R", "stat /etc/hostname", str(tmp_path / "first.ext4")],
                          capture_output=True, text=True).stdout
    for field in ("ctime", "atime", "mtime"):
        assert f" {field}: 0x{EPOCH:08x}:" in stat, stat
    old = subprocess.run(["debugfs", "-R", "stat /etc/old", str(tmp_path / "first.ext4")],
                         capture_output=True, text=True).stdout
    assert f" mtime: 0x{EPOCH - 86400:08x}:" in old, old


def test_every_used_inode_is_listed_from_the_bitmaps(tmp_path):
    needs_tools()
    tree = make_tree(tmp_path / "tree")
    disk.make_ext4(tree, tmp_path / "root.ext4", "root", STAMP)
    header = dumpe2fs_header(tmp_path / "root.ext4")
    used = int(header["Inode count"]) - int(header["Free inodes"])
    # The reserved inodes below "First inode" count as used; only the root of them is listed.
    assert len(disk.used_inodes(tmp_path / "root.ext4")) == used - int(header["First inode"]) + 2


def test_the_esp_twice_gives_the_same_bytes_with_the_stamps_volume_id(tmp_path):
    needs_tools()
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + bytes(5000))
    (esp / "loader").mkdir()
    (esp / "loader/loader.conf").write_text("default rackboot-*\n")
    disk.make_vfat(esp, tmp_path / "first.vfat", 64, STAMP)
    touch_everything(esp)
    disk.make_vfat(esp, tmp_path / "second.vfat", 64, STAMP)
    assert (tmp_path / "first.vfat").read_bytes() == (tmp_path / "second.vfat").read_bytes()
    listing = subprocess.run(["mdir", "-i", str(tmp_path / "first.vfat"), "::/EFI/BOOT"],
                             capture_output=True, text=True, check=True).stdout
    volume = STAMP.volume_id("esp")
    assert f"Volume Serial Number is {volume[:4]}-{volume[4:]}" in listing
    assert "BOOTX64  EFI      5002 2023-11-14  22:13" in listing


def test_the_gpt_disk_twice_gives_the_same_bytes_with_the_stamps_uuids(tmp_path):
    needs_tools()
    tree, esp = make_tree(tmp_path / "tree"), tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ")
    disk.assemble(tree, esp, tmp_path / "work1", tmp_path / "first.img", STAMP)
    touch_everything(tree)
    touch_everything(esp)
    disk.assemble(tree, esp, tmp_path / "work2", tmp_path / "second.img", STAMP)
    assert _sha256(tmp_path / "first.img") == _sha256(tmp_path / "second.img")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(tmp_path / "first.img")],
                                      capture_output=True, text=True, check=True).stdout)["partitiontable"]
    assert table["id"].lower() == STAMP.uuid("gpt-disk")
    assert [(p["name"], p["uuid"].lower()) for p in table["partitions"]] == [
        ("esp", STAMP.uuid("gpt-partition:esp")),
        (disk.ROOT_LABEL, STAMP.uuid(f"gpt-partition:{disk.ROOT_LABEL}"))]


def _sha256(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]


def test_the_checksum_file_is_one_sha256sum_checks(tmp_path):
    if shutil.which("bmaptool") is None:
        pytest.skip("needs bmaptool (bmap-tools)")
    image = tmp_path / "jumphost.img"
    with image.open("wb") as data:      # data, a hole, data: as a disk image is
        data.write(b"GPT" * 1000)
        data.seek(8 << 20)
        data.write(b"root")
    made = disk.flashing_files(image, compress=False)
    assert made == [tmp_path / "jumphost.img.sha256", tmp_path / "jumphost.img.bmap"]
    check = subprocess.run(["sha256sum", "--check", "--strict", "jumphost.img.sha256"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == "jumphost.img: OK\n", check.stdout + check.stderr
