"""The OS trees' cache (image/tree_cache.py): a tree is made once per set of
inputs, builds get copies of it, and nothing a build does reaches it."""

import os
from pathlib import Path

from image import tree_cache

INPUTS = {"rootfs": ("rootfs-bookworm-amd64-0123", 1, 2), "epoch": 1_700_000_000}


class Maker:
    """make() for prepared(): a small tree (a file, a link, a mode, a time), counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, target: Path) -> None:
        self.calls += 1
        assert target.is_dir() and not any(target.iterdir())     # prepared() gives make an empty directory
        (target / "etc").mkdir()
        (target / "etc/hostname").write_text("rackboot\n")
        os.chmod(target / "etc/hostname", 0o600)
        os.utime(target / "etc/hostname", (1_600_000_000, 1_600_000_000))
        (target / "etc/link").symlink_to("hostname")


def listing(tree: Path) -> dict[str, tuple]:
    return {str(p.relative_to(tree)): (oct(os.lstat(p).st_mode), os.lstat(p).st_mtime,
                                       os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
            for p in sorted(tree.rglob("*"))}


def test_a_tree_is_made_once_and_copied_after(tmp_path):
    make = Maker()
    assert tree_cache.prepared(tmp_path / "cache", "jumphost", INPUTS, tmp_path / "first", make) is False
    assert tree_cache.prepared(tmp_path / "cache", "jumphost", INPUTS, tmp_path / "second", make) is True
    assert make.calls == 1
    assert listing(tmp_path / "first") == listing(tmp_path / "second")
    assert listing(tmp_path / "second")["etc/hostname"][:2] == (oct(0o100600), 1_600_000_000)


def test_what_a_build_changes_in_its_copy_never_reaches_the_cache(tmp_path):
    make = Maker()
    tree_cache.prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "first", make)
    (tmp_path / "first/etc/hostname").write_text("changed by the first build\n")
    (tmp_path / "first/etc/racks").mkdir()
    tree_cache.prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "second", make)
    assert (tmp_path / "second/etc/hostname").read_text() == "rackboot\n"
    assert not (tmp_path / "second/etc/racks").exists()
    (tmp_path / "second/etc/hostname").write_text("changed by the second build\n")
    tree_cache.prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "third", make)
    assert (tmp_path / "third/etc/hostname").read_text() == "rackboot\n"


def test_new_inputs_make_a_new_tree_and_the_oldest_entry_goes(tmp_path):
    make = Maker()
    cache = tmp_path / "cache"
    tree_cache.prepared(cache, "pi", INPUTS, tmp_path / "pi", make)
    entries = []
    for number in range(tree_cache.KEEP + 1):
        inputs = {**INPUTS, "epoch": INPUTS["epoch"] + number}
        assert tree_cache.prepared(cache, "jumphost", inputs, tmp_path / f"jumphost-{number}", make) is False
        entries.append({p.name for p in cache.glob("tree-jumphost-*")} - set().union(*entries))
    assert make.calls == tree_cache.KEEP + 2
    kept = {p.name for p in cache.glob("tree-jumphost-*")}
    assert kept == set().union(*entries[1:])         # the newest KEEP; the first is gone
    assert len(list(cache.glob("tree-pi-*"))) == 1   # other kinds are not touched
    assert tree_cache.prepared(cache, "jumphost", {**INPUTS, "epoch": INPUTS["epoch"] + 1},
                               tmp_path / "again", make) is True


def test_without_a_cache_the_tree_is_made_and_not_kept(tmp_path):
    make = Maker()
    assert tree_cache.prepared(None, "jumphost", INPUTS, tmp_path / "tree", make) is False
    assert (tmp_path / "tree/etc/hostname").read_text() == "rackboot\n"
    assert not (tmp_path / "cache").exists()


def test_the_inputs_name_the_rootfs_file_code_pins_and_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"tar")
    inputs = tree_cache.os_tree_inputs(tarball, "arm64", None)
    assert inputs["epoch"] == 1_700_000_000 and inputs["arch"] == "arm64" and inputs["k3s"] is None
    assert inputs["rootfs"][0] == str(tarball) and inputs["rootfs"][1] == 3
    assert inputs["requirements"].name == "requirements.txt" and inputs["agent"].name == "firstboot"
