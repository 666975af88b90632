"""The jumphost's root on a rebuild: the cached tree's ext4 and the build's
layer written into it by debugfs (image/ext4_layer.py) give the same files
as mke2fs -d of the whole tree, the same bytes twice, and a clean e2fsck;
what debugfs cannot be given is refused, and the root is then made whole."""

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from image import disk, ext4_layer, tree_cache
from image.reproducible import Stamp

STAMP = Stamp(1_700_000_000, "ab" * 32)
INPUTS = {"v": 1, "epoch": STAMP.epoch}
SIZE_MB = 64


@pytest.fixture(autouse=True)
def needs_tools():
    missing = [t for t in ("mke2fs", "debugfs", "dumpe2fs", "e2fsck") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'e2fsprogs'}")


def make_lower(target: Path) -> None:
    (target / "etc/systemd/system").mkdir(parents=True)
    (target / "etc/hostname").write_text("rackboot\n")
    os.chmod(target / "etc/hostname", 0o600)
    (target / "etc/keep").write_text("kept\n")
    (target / "usr/lib/tool").mkdir(parents=True)
    (target / "usr/lib/tool/data").write_bytes(random.Random(1).randbytes(300_000))
    (target / "usr/lib/tool/link").symlink_to("data")
    (target / "usr/lib/tool/here").symlink_to("./data")
    (target / "home/admin").mkdir(parents=True)
    os.chown(target / "home/admin", 1000, 1000)
    os.chmod(target / "home/admin", 0o750)


def change(tree: Path) -> None:
    """What a build adds and changes: new directories and files, a changed
    file of the cached tree, systemd's escaped names, owners and modes."""
    (tree / "usr/share/rackboot/racks/example").mkdir(parents=True)
    (tree / "usr/share/rackboot/racks/example/profile.yaml").write_text("rack: example\n")
    (tree / "usr/lib/rackboot").mkdir(parents=True)
    (tree / "usr/lib/rackboot/pi-root.squashfs").write_bytes(random.Random(2).randbytes(2_000_000))
    (tree / "etc/hostname").write_text("rackboot-2\n")
    unit = tree / "etc/systemd/system/srv-rackboot-pi\\x2droot.mount"
    unit.write_text("[Mount]\n")
    (tree / "etc/systemd/system/local-fs.target.wants").mkdir()
    (tree / "etc/systemd/system/local-fs.target.wants" / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    (tree / "usr/lib/rackboot/here").symlink_to("./pi-root.squashfs")      # a target kept as it is written
    (tree / "home/admin/.ssh").mkdir(mode=0o700)
    (tree / "home/admin/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA admin\n")
    for path in (tree / "home/admin/.ssh", tree / "home/admin/.ssh/authorized_keys"):
        os.chown(path, 1000, 1000)


def listing(filesystem: str, work: Path) -> dict[str, tuple]:
    """Every file of filesystem: mode, owner, modification time, content or link target."""
    out = work / f"dump-{len(list(work.glob('dump-*')))}"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {out}", filesystem], check=True, capture_output=True)
    seen = {}
    for path in sorted((out / "root").rglob("*")) if (out / "root").exists() else sorted(out.rglob("*")):
        info = os.lstat(path)
        body = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        mtime = None if path.is_symlink() else int(info.st_mtime)     # rdump cannot set a link's (inode_times)
        seen[str(path.relative_to(out))] = (oct(info.st_mode), info.st_uid, info.st_gid, mtime, body)
    return seen


def inode_times(filesystem: str, path: str) -> str:
    text = subprocess.run(["debugfs", "-R", f"stat {path}", filesystem], check=True, capture_output=True,
                          text=True).stdout
    return "\n".join(line for line in text.splitlines() if "time:" in line)


def build_root(tmp_path: Path, name: str, edit=change, layered: bool = True, size_mb: int = SIZE_MB) -> tuple[Path, int]:
    """A disk-like file with the root at an offset, made as a rebuild makes it."""
    tree, image, offset = tmp_path / f"tree-{name}", tmp_path / f"{name}.img", 1 << 20
    with tree_cache.prepared_layers(tmp_path / "cache", "jumphost", INPUTS, tree, make_lower) as (_, layers):
        if layers.upper is None:
            pytest.skip("needs overlayfs")
        edit(tree)
        with image.open("wb") as data:
            data.truncate(offset + (size_mb << 20))
        maker = ext4_layer.root_maker(layers) if layered else disk.make_ext4
        maker(tree, image, "rackboot-root", STAMP, offset=offset, size_mb=size_mb)
    return image, offset


def test_the_layered_root_has_the_whole_trees_files_and_the_same_bytes_twice(tmp_path):
    layered, offset = build_root(tmp_path, "layered")
    again, _ = build_root(tmp_path, "again")
    whole, _ = build_root(tmp_path, "whole", layered=False)
    assert len(list((tmp_path / "cache").glob("tree-jumphost-*/root-rackboot-root-64M.ext4"))) == 1
    assert layered.read_bytes() == again.read_bytes()
    first, second = disk.filesystem_at(layered, offset), disk.filesystem_at(whole, offset)
    assert listing(first, tmp_path) == listing(second, tmp_path)
    for path in ("/usr/lib/rackboot/pi-root.squashfs", "/etc/hostname", "/etc/systemd/system",
                 "/etc/systemd/system/local-fs.target.wants/srv-rackboot-pi\\x2droot.mount"):
        assert inode_times(first, path) == inode_times(second, path), path
    check = subprocess.run(["e2fsck", "-fn", first], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    header = subprocess.run(["dumpe2fs", "-h", first], capture_output=True, text=True, check=True).stdout
    assert f"Filesystem UUID:          {STAMP.uuid('ext4:rackboot-root')}" in header


@pytest.mark.parametrize("name", ["two words", "line\nbreak", 'a"quote', "<2>", "#comment", "tab\there", "-f", ""])
def test_names_debugfs_cannot_take_are_refused(name):
    with pytest.raises(ext4_layer.CannotLayer):
        ext4_layer.plain(name)
    with pytest.raises(ext4_layer.CannotLayer):
        ext4_layer.plain_path(f"/etc/{name}/x" if name else "/etc//x/\n")
    with pytest.raises(ext4_layer.CannotLayer):
        ext4_layer.plain_target(f"../{name}" if name else "")


def test_systemds_escaped_names_and_links_pass_as_they_are():
    assert ext4_layer.plain_path("/etc/systemd/system/srv-rackboot-pi\\x2droot.mount") == \
        "/etc/systemd/system/srv-rackboot-pi\\x2droot.mount"
    assert ext4_layer.plain_path("usr/lib/x", absolute=False) == "usr/lib/x"
    assert ext4_layer.plain_target("./data") == "./data" and ext4_layer.plain_target("../lib//x/") == "../lib//x/"


def _odd_name(tree: Path) -> None:
    change(tree)
    (tree / "etc/two words.conf").write_text("x\n")


def _deleted(tree: Path) -> None:
    change(tree)
    (tree / "etc/keep").unlink()        # a whiteout in the layer


@pytest.mark.parametrize("edit", [_odd_name, _deleted])
def test_a_layer_debugfs_cannot_take_gives_the_root_made_whole(tmp_path, edit):
    layered, offset = build_root(tmp_path, "layered", edit)
    whole, _ = build_root(tmp_path, "whole", edit, layered=False)
    assert layered.read_bytes() == whole.read_bytes()
    assert not list((tmp_path / "cache").glob("tree-jumphost-*/root-*.ext4"))     # no base was made for it


def test_the_cache_entry_keeps_the_filesystem_of_one_size(tmp_path):
    build_root(tmp_path, "first")
    layered, offset = build_root(tmp_path, "larger", size_mb=SIZE_MB + 64)
    kept = [p.name for p in (tmp_path / "cache").glob("tree-jumphost-*/root-*.ext4")]
    assert kept == [f"root-rackboot-root-{SIZE_MB + 64}M.ext4"]
    check = subprocess.run(["e2fsck", "-fn", disk.filesystem_at(layered, offset)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
