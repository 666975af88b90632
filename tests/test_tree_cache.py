"""The OS trees' cache (image/tree_cache.py): a tree is made once per set of
inputs, builds see it through a layer of their own (overlayfs, or a copy
where there is none), and nothing a build does reaches it."""

import os
from pathlib import Path

import pytest

from image import tree_cache

INPUTS = {"rootfs": ("rootfs-bookworm-amd64-0123", 1, 2), "epoch": 1_700_000_000}


@pytest.fixture(params=["copy"])
def layering(request, monkeypatch):
    """How builds see the tree: "copy" (what a host without overlayfs gets;
    the pure tier's), or "overlay" (root: real mounts)."""
    if request.param == "copy":
        monkeypatch.setattr(tree_cache, "_mount_overlay", lambda lower, layer, target: False)
    elif os.geteuid() != 0:
        pytest.skip("overlay mounts need root")
    return request.param


def prepared(cache, kind, inputs, target, make, change=None) -> bool:
    """prepared() as a build uses it: change(target) is the build's own work."""
    with tree_cache.prepared(cache, kind, inputs, target, make) as hit:
        if change:
            change(target)
        return hit, listing(target)


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
        (target / "etc/new").write_text("newer than the epoch\n")
        (target / "etc/link").symlink_to("hostname")


def listing(tree: Path) -> dict[str, tuple]:
    return {str(p.relative_to(tree)): (oct(os.lstat(p).st_mode), os.lstat(p).st_mtime,
                                       os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None)
            for p in sorted(tree.rglob("*"))}


def change(target: Path) -> None:
    (target / "etc/hostname").write_text("changed by a build\n")
    (target / "etc/racks").mkdir()
    (target / "etc/new").unlink()


def test_a_tree_is_made_once_and_builds_see_it_as_made(tmp_path, layering):
    make = Maker()
    first = prepared(tmp_path / "cache", "jumphost", INPUTS, tmp_path / "first", make)
    second = prepared(tmp_path / "cache", "jumphost", INPUTS, tmp_path / "second", make)
    assert make.calls == 1 and (first[0], second[0]) == (False, True)
    assert first[1] == second[1]
    assert second[1]["etc/hostname"][:2] == (oct(0o100600), 1_600_000_000)
    assert second[1]["etc/new"][1] == INPUTS["epoch"]       # clamped when it was made


def test_what_a_build_changes_never_reaches_the_cache(tmp_path, layering):
    make = Maker()
    for name in ("first", "second"):
        prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / name, make, change)
    hit, seen = prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "third", make)
    assert hit and seen["etc/hostname"][2] == b"rackboot\n" and "etc/new" in seen and "etc/racks" not in seen


def test_new_inputs_make_a_new_tree_and_the_oldest_entry_goes(tmp_path, layering):
    make = Maker()
    cache = tmp_path / "cache"
    prepared(cache, "pi", INPUTS, tmp_path / "pi", make)
    entries = []
    for number in range(tree_cache.KEEP + 1):
        inputs = {**INPUTS, "epoch": INPUTS["epoch"] + number}
        assert prepared(cache, "jumphost", inputs, tmp_path / f"jumphost-{number}", make)[0] is False
        entries.append({p.name for p in cache.glob("tree-jumphost-*")} - set().union(*entries))
    assert make.calls == tree_cache.KEEP + 2
    kept = {p.name for p in cache.glob("tree-jumphost-*")}
    assert kept == set().union(*entries[1:])         # the newest KEEP; the first is gone
    assert len(list(cache.glob("tree-pi-*"))) == 1   # other kinds are not touched
    assert prepared(cache, "jumphost", {**INPUTS, "epoch": INPUTS["epoch"] + 1}, tmp_path / "again", make)[0]


def test_without_a_cache_the_tree_is_made_seen_the_same_way_and_not_kept(tmp_path, layering):
    make = Maker()
    hit, seen = prepared(None, "jumphost", INPUTS, tmp_path / "tree", make, change)
    assert hit is False and seen["etc/hostname"][2] == b"changed by a build\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]     # no entry, no layer left


@pytest.mark.machine    # root: overlay mounts
@pytest.mark.parametrize("layering", ["overlay"], indirect=True)
def test_with_overlayfs_builds_write_to_a_layer_of_their_own(tmp_path, layering):
    make = Maker()
    prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "first", make)
    hit, seen = prepared(tmp_path / "cache", "pi", INPUTS, tmp_path / "second", make, change)
    assert hit and seen["etc/hostname"][2] == b"changed by a build\n" and "etc/new" not in seen
    [entry] = (tmp_path / "cache").glob("tree-pi-*")
    assert (entry / "tree/etc/hostname").read_text() == "rackboot\n" and (entry / "tree/etc/new").exists()
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()     # unmounted when the block ends
    assert not any((tmp_path / "second").iterdir())


def test_the_inputs_name_the_rootfs_file_code_pins_and_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"tar")
    inputs = tree_cache.os_tree_inputs(tarball, "arm64", ())
    assert inputs["epoch"] == 1_700_000_000 and inputs["arch"] == "arm64" and inputs["k3s"] == []
    assert inputs["rootfs"][0] == str(tarball) and inputs["rootfs"][1] == 3
    assert inputs["requirements"].name == "requirements.txt" and inputs["agent"].name == "firstboot"
