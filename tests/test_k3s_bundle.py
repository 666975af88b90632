"""fetch-k3s and bundle verification against a local HTTP server serving a
tree shaped like a k3s GitHub release (the real checksum files list more
assets than rackboot fetches, as these do)."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from firstboot.errors import BadInput, RackbootError
from image import k3s_bundle
from tests.doubles import k3s_standin_bundle
from tests.doubles.k3s_release_mirror import Release

VERSION = "v1.31.4+k3s1"


@pytest.fixture
def release(tmp_path, monkeypatch):
    monkeypatch.setattr(k3s_bundle, "RETRY_DELAYS", (0, 0, 0))
    served = Release(tmp_path / "mirror-root", VERSION)
    served.serve()
    yield served
    served.stop()


def leftovers(destination: Path) -> list[str]:
    return sorted(p.name for p in destination.iterdir()) if destination.exists() else []


def test_fetch_verifies_and_writes_manifest(release, tmp_path):
    out = tmp_path / "k3s"
    path = k3s_bundle.fetch(VERSION, out, mirror=release.url)
    assert path == out / VERSION and leftovers(out) == [VERSION]
    assert f"/{VERSION.replace('+', '%2B')}/k3s" in release.requests
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["version"] == VERSION and sorted(manifest["arches"]) == ["amd64", "arm64"]
    bundle = k3s_bundle.verify(path)
    assert bundle.version == VERSION and bundle.binary("arm64") == path / "k3s-arm64"
    assert os.access(bundle.binary("amd64"), os.X_OK)
    assert bundle.files["k3s"] == hashlib.sha256((release.dir / "k3s").read_bytes()).hexdigest()
    assert not (path / "k3s-airgap-images-amd64.tar.gz").exists()


def test_mirror_from_environment(release, tmp_path, monkeypatch):
    monkeypatch.setenv("RACKBOOT_K3S_MIRROR", release.url)
    k3s_bundle.fetch(VERSION, tmp_path / "k3s", arches=("amd64",))
    assert release.requests


def test_corrupt_asset_is_refused_and_nothing_left(release, tmp_path):
    (release.dir / "k3s-arm64").write_bytes(b"tampered")
    out = tmp_path / "k3s"
    with pytest.raises(RackbootError, match=r"k3s-arm64: checksum mismatch \(expected [0-9a-f]{64}, got"):
        k3s_bundle.fetch(VERSION, out, mirror=release.url)
    assert leftovers(out) == []


def test_missing_asset(release, tmp_path):
    (release.dir / "k3s-airgap-images-amd64.tar.zst").unlink()
    with pytest.raises(RackbootError, match=r"k3s-airgap-images-amd64.tar.zst: HTTP 404 from http://"):
        k3s_bundle.fetch(VERSION, tmp_path / "k3s", mirror=release.url)
    assert leftovers(tmp_path / "k3s") == []


def test_asset_not_in_checksum_file(release, tmp_path):
    sums = release.dir / "sha256sum-amd64.txt"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if not line.endswith("  k3s")))
    with pytest.raises(RackbootError, match=r"^k3s: not listed in sha256sum-amd64.txt of v1.31.4\+k3s1"):
        k3s_bundle.fetch(VERSION, tmp_path / "k3s", mirror=release.url)


def test_server_error_once_then_success(release, tmp_path):
    release.fail_next = [503]
    k3s_bundle.fetch(VERSION, tmp_path / "k3s", mirror=release.url, arches=("amd64",))
    assert release.requests[0] == release.requests[1]


def test_unreachable_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(k3s_bundle, "RETRY_DELAYS", (0,))
    with pytest.raises(RackbootError, match=r"sha256sum-amd64.txt: cannot download http://127.0.0.1:9/"):
        k3s_bundle.fetch(VERSION, tmp_path / "k3s", mirror="http://127.0.0.1:9")
    assert leftovers(tmp_path / "k3s") == []


def test_failed_refetch_keeps_the_good_bundle(release, tmp_path):
    out = tmp_path / "k3s"
    k3s_bundle.fetch(VERSION, out, mirror=release.url)
    (release.dir / "k3s").write_bytes(b"tampered upstream")
    with pytest.raises(RackbootError):
        k3s_bundle.fetch(VERSION, out, mirror=release.url)
    assert leftovers(out) == [VERSION]
    k3s_bundle.verify(out / VERSION)


def test_verify_refuses_tampered_and_missing(release, tmp_path):
    path = k3s_bundle.fetch(VERSION, tmp_path / "k3s", mirror=release.url)
    (path / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"tampered")
    with pytest.raises(BadInput, match=r"k3s-airgap-images-arm64.tar.zst: checksum mismatch") as caught:
        k3s_bundle.verify(path)
    assert "./build.py fetch-k3s" in caught.value.hint
    (path / "k3s").unlink()
    with pytest.raises(BadInput, match=r"/k3s: missing"):
        k3s_bundle.verify(path)


def test_bad_version():
    with pytest.raises(BadInput, match=r"'1.31' is not a k3s release tag"):
        k3s_bundle.fetch("1.31", Path("/nonexistent"))


def test_command_line_fetch_and_image_version_check(release, build, tmp_path):
    """fetch-k3s takes a profile and fetches the version it names; image
    refuses a bundle of another version before doing any work."""
    result = build("fetch-k3s", "rack-profiles/example.yaml", "-o", str(tmp_path / "k3s"), "--mirror", release.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "k3s" / VERSION)
    other = k3s_standin_bundle.make(tmp_path / "other", "v1.30.0+k3s1")
    result = build("image", "rack-profiles/example.yaml", "-o", str(tmp_path / "out"), "--k3s-bundle", str(other))
    assert result.returncode == 2
    assert "is v1.30.0+k3s1, but the racks want v1.31.4+k3s1" in result.stderr
    assert not (tmp_path / "out").exists()
