"""Rack bundles (firstboot/bundle.py, image/bundle_build.py): one rack's own
part as a versioned artifact with a digest; the agent uses the newest one
that verifies; a jumphost installs a pushed one only when it is its rack's
and newer (firstboot/bundle_install.py)."""

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from firstboot import bundle, bundle_archive, bundle_install, rack_model, state
from firstboot.errors import BadInput
from firstboot.layout import Layout
from firstboot.profile import load_profiles
from image import bundle_build, bundle_seal, render
from tests.conftest import REPO
from tests.doubles import k3s_standin_bundle

PROFILES = REPO / "rack-profiles"
EXAMPLE = load_profiles([PROFILES / "example.yaml"])[0]


def tree_bytes(directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): (os.readlink(p) if p.is_symlink() else
                                                 None if p.is_dir() else p.read_bytes())
            for p in sorted(directory.rglob("*"))}


def test_a_bundle_holds_the_racks_own_part_and_is_deterministic(tmp_path):
    one = bundle_build.write(EXAMPLE, tmp_path / "one" / "example", 7, None)
    two = bundle_build.write(EXAMPLE, tmp_path / "two" / "example", 7, None)
    assert one.digest == two.digest and tree_bytes(one.directory) == tree_bytes(two.directory)
    meta = json.loads((one.directory / bundle.META).read_text())
    assert meta["rack"] == "example" and meta["revision"] == 7 and meta["k3s_version"] == EXAMPLE.k3s.version
    assert meta["format"] == bundle.FORMAT and meta["digest"] == one.digest
    names = {e[0] for e in one.entries}
    # the model, its own profile files (manifests included), rendered files, the TFTP tree
    assert {"profile.json", "profiles/example.yaml", "profiles/defaults.yaml",
            "profiles/kube/example/10-hello.yaml", "jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf",
            "pi/nodes/pi-example-01/etc/rancher/k3s/config.yaml", "tftp/config.txt", "tftp/0a1b2c01",
            "tftp/start4.elf"} <= names
    assert os.readlink(one.directory / "tftp/0a1b2c01") == "."           # a Pi's directory: the tree itself
    assert os.readlink(one.directory / "tftp/start4.elf") == "/usr/lib/rackboot/pi-boot/start4.elf"
    # another revision is another digest, with the same files
    assert bundle_build.write(EXAMPLE, tmp_path / "three" / "example", 8, None).digest != one.digest
    # the agent reads the model with the bundle's own manifests
    layout = Layout(tmp_path / "machine").moving(racks=tmp_path / "one")
    [model] = rack_model.read_all(layout)
    assert model.manifests[0].is_relative_to(one.directory / "profiles")


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "tftp/config.txt").write_text("changed\n"), "its files differ from BUNDLE.json"),
    (lambda d: (d / "extra").write_text("x"), "its files differ from BUNDLE.json (1 paths, first extra)"),
    (lambda d: (d / "profile.json").unlink(), "first profile.json"),
    (lambda d: (d / "tftp/config.txt").chmod(0o666), "mode 0666"),
    (lambda d: (d / "tftp/evil").symlink_to("/etc/rancher/k3s/token"), "a link to '/etc/rancher/k3s/token'"),
    (lambda d: (d / "jumphost/x").symlink_to("../profile.json"), "the TFTP tree's"),
    (lambda d: ((d / "tftp/sub").mkdir(), (d / "tftp/sub/x").symlink_to(".")), "tftp/sub/x: a link to '.'"),
    (lambda d: (d / bundle.META).write_text((d / bundle.META).read_text().replace('"revision": 4', '"revision": 9')),
     "digest sha256:"),
    (lambda d: (d / bundle.META).write_text("{"), "unreadable"),
    (lambda d: (d / bundle.META).unlink(), "missing"),
])
def test_a_damaged_bundle_does_not_verify(tmp_path, damage, expected):
    made = bundle_build.write(EXAMPLE, tmp_path / "example", 4, None)
    damage(made.directory)
    with pytest.raises(bundle.BundleInvalid) as caught:
        bundle.verify(made.directory)
    assert expected in str(caught.value)


def test_a_bundle_relabelled_for_another_rack_is_foreign(tmp_path):
    made = bundle_build.write(EXAMPLE, tmp_path / "example", 4, None)
    meta = made.directory / bundle.META
    meta.write_text(meta.read_text().replace('"rack": "example"', '"rack": "other"'))
    with pytest.raises(bundle.BundleInvalid, match="a bundle of rack 'other', not of 'example'"):
        bundle.verify(made.directory, "example")
    with pytest.raises(bundle.BundleInvalid, match="digest"):     # and its digest no longer holds either
        bundle.verify(made.directory)


@pytest.fixture
def jumphost(tmp_path, monkeypatch):
    """A jumphost's layout whose image carries the example rack at revision 2
    and its k3s, identified as that rack; re-running the agent is recorded."""
    layout = Layout(tmp_path / "machine")
    bundle_build.write(EXAMPLE, layout.racks / "example", 2, None)
    k3s_standin_bundle.make(layout.k3s_bundles, EXAMPLE.k3s.version)
    state.save(layout, {"steps": {"identify": {"result": {"rack": "example"}}}})
    reruns = []
    monkeypatch.setattr(bundle_install, "_rerun_agent", lambda: reruns.append(1) or "the agent ran again")
    return layout, reruns


def archive(tmp_path: Path, profile, revision: int) -> Path:
    made = bundle_build.write(profile, tmp_path / f"built-{revision}" / profile.rack, revision, None)
    path = tmp_path / f"{profile.rack}-{revision}.tar"
    path.write_bytes(bundle_archive.pack(made.directory))
    return path


def test_the_newest_verified_bundle_is_used_and_a_corrupt_one_skipped(jumphost, tmp_path, caplog):
    layout, reruns = jumphost
    assert bundle.choose(layout, "example").revision == 2
    out = bundle_install.install(layout, archive(tmp_path, EXAMPLE, 5))
    assert "rack example: revision 2 -> 5" in out and reruns == [1]
    assert bundle.choose(layout, "example").directory == layout.pushed_bundles / "example/5"
    assert bundle_install.install(layout, archive(tmp_path, EXAMPLE, 6)).startswith("rack example: revision 5 -> 6")
    (layout.pushed_bundles / "example/6/tftp/config.txt").write_text("damaged\n")
    with caplog.at_level(logging.WARNING, logger="rackboot.bundle"):
        chosen = rack_model.read_all(layout)
    assert [m.rack for m in chosen] == ["example"]
    assert bundle.choose(layout, "example").revision == 5
    assert f"rack example: skipping the bundle at {layout.pushed_bundles / 'example/6'}, which failed " \
           "verification" in caplog.text
    # a pushed directory whose name is not its revision is not used either
    os.rename(layout.pushed_bundles / "example/5", layout.pushed_bundles / "example/9")
    assert bundle.choose(layout, "example").revision == 2
    assert "holds revision 5, not 9" in caplog.text


def test_install_refuses_another_rack_an_older_revision_and_a_changed_one(jumphost, tmp_path):
    layout, reruns = jumphost
    other = load_profiles([PROFILES / "skolo-rack4.yaml"])[0]
    with pytest.raises(BadInput, match="the bundle is rack skolo-rack4's; this jumphost is rack example's"):
        bundle_install.install(layout, archive(tmp_path, other, 9))
    bundle_install.install(layout, archive(tmp_path, EXAMPLE, 5))
    with pytest.raises(BadInput, match="revision 3 of rack example is older than revision 5") as caught:
        bundle_install.install(layout, archive(tmp_path, EXAMPLE, 3))
    assert "--rollback" in caught.value.hint
    assert "already in use; nothing changed" in bundle_install.install(layout, archive(tmp_path, EXAMPLE, 5))
    changed = tmp_path / "changed"
    shutil.copytree(PROFILES, changed)
    (changed / "example.yaml").write_text((changed / "example.yaml").read_text().replace("lab-team", "other-team"))
    with pytest.raises(BadInput, match="revision 5 of rack example is in use here with other contents"):
        bundle_install.install(layout, archive(tmp_path / "c", load_profiles([changed / "example.yaml"])[0], 5))
    assert reruns == [1]
    assert sorted(p.name for p in (layout.pushed_bundles / "example").iterdir()) == ["5"]   # no staging left


def test_a_corrupt_archive_is_refused_and_nothing_stays(jumphost, tmp_path):
    layout, reruns = jumphost
    good = archive(tmp_path, EXAMPLE, 5)
    data = bytearray(good.read_bytes())
    spot = data.index(b"pi-example-01", 2048)       # inside a file's contents, past the first headers
    data[spot:spot + 2] = b"XX"
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(bundle.BundleInvalid):
        bundle_install.install(layout, bad)
    truncated = tmp_path / "short.tar"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(BadInput):
        bundle_install.install(layout, truncated)
    assert list((layout.pushed_bundles / "example").iterdir()) == [] and reruns == []
    assert bundle.choose(layout, "example").revision == 2


def test_rollback_withdraws_the_newest_pushed_revision(jumphost, tmp_path):
    layout, reruns = jumphost
    with pytest.raises(BadInput, match="uses its image's bundle here: there is no pushed revision to roll back"):
        bundle_install.rollback(layout, "example")
    bundle_install.install(layout, archive(tmp_path, EXAMPLE, 5))
    bundle_install.install(layout, archive(tmp_path, EXAMPLE, 6))
    assert "revision 6 -> 5 (rollback)" in bundle_install.rollback(layout, "example")
    assert bundle.choose(layout, "example").revision == 5
    assert "revision 5 -> 2 (rollback)" in bundle_install.rollback(layout, "example")
    assert bundle.choose(layout, "example").revision == 2 and len(reruns) == 4
    assert sorted(p.name for p in (layout.pushed_bundles / "example/.withdrawn").iterdir()) == ["5", "6"]
    # a withdrawn revision may be pushed again
    assert "revision 2 -> 6" in bundle_install.install(layout, archive(tmp_path, EXAMPLE, 6))
    with pytest.raises(BadInput, match="this jumphost is rack example's, not skolo-rack4's"):
        bundle_install.rollback(layout, "skolo-rack4")


def test_an_image_tree_from_before_bundles_is_used_but_any_push_is_newer(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "machine")
    render.render([EXAMPLE], layout.racks)            # no BUNDLE.json
    k3s_standin_bundle.make(layout.k3s_bundles, EXAMPLE.k3s.version)
    assert bundle.choose(layout, "example").revision == bundle.UNSEALED
    monkeypatch.setattr(bundle_install, "_rerun_agent", lambda: "ran")
    assert "revision -1 -> 0" in bundle_install.install(layout, archive(tmp_path, EXAMPLE, 0))


def git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_the_revision_is_the_profile_repositorys_commit_count(tmp_path, build):
    repo = tmp_path / "repo"
    shutil.copytree(PROFILES, repo / "rack-profiles")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    profile = load_profiles([repo / "rack-profiles/example.yaml"])[0]
    assert bundle_seal.revision(profile, None) == (2, git(repo, "rev-parse", "HEAD"))
    result = build("bundle", str(repo / "rack-profiles/example.yaml"), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out/example" / bundle.META).read_text())["revision"] == 2
    # uncommitted changes to the rack's inputs: no revision, unless one is given; nothing written
    (repo / "rack-profiles/kube/example/20-new.yaml").write_text("# new\n")
    result = build("bundle", str(repo / "rack-profiles/example.yaml"), "-o", str(tmp_path / "dirty"))
    assert result.returncode == 2 and "uncommitted changes" in result.stderr and "--revision N" in result.stderr
    assert not (tmp_path / "dirty").exists()
    assert bundle_seal.revision(profile, 40) == (40, None)


def tar_of(path: Path, members: list[tuple[str, str, bytes | str]]) -> Path:
    """A tar of (name, kind, content or link target) as a hostile pusher would make it."""
    import io
    import tarfile
    with tarfile.open(path, "w") as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("members, expected", [
    ([("tftp", "dir", ""), ("tftp/x", "link", "OUTSIDE"), ("tftp/x/planted", "file", b"x")], "under a link"),
    ([("tftp", "dir", ""), ("tftp/x", "link", "OUTSIDE/planted"), ("tftp/x", "file", b"x")], "twice"),
    ([("tftp", "dir", ""), ("tftp/x", "link", "OUTSIDE"), ("tftp/x", "dir", "")], "twice"),
    ([("../planted", "file", b"x")], "not a plain relative path"),
    ([("/planted", "file", b"x")], "not a plain relative path"),
])
def test_an_archive_cannot_write_outside_its_staging_directory(jumphost, tmp_path, members, expected):
    layout, reruns = jumphost
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(n, k, c.replace("OUTSIDE", str(outside)) if isinstance(c, str) else c) for n, k, c in members]
    with pytest.raises(bundle.BundleInvalid, match=expected):
        bundle_install.install(layout, tar_of(tmp_path / "hostile.tar", members))
    assert list(outside.iterdir()) == [] and outside.stat().st_mode & 0o777 == 0o755
    assert list((layout.pushed_bundles / "example").iterdir()) == [] and reruns == []
    assert not (layout.pushed_bundles / "planted").exists() and not (layout.pushed_bundles.parent / "planted").exists()
