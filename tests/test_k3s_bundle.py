"""fetch-k3s and bundle verification against a local HTTP server serving a
tree shaped like a k3s GitHub release (the real checksum files list more
assets than rackboot fetches, as these do)."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from firstboot.errors import BadInput, RackbootError
from image import k3s_bundle, k3s_fetch, k3s_pins
from tests.doubles import k3s_standin_bundle
from tests.doubles.k3s_release_mirror import Release

VERSION = "v1.31.4+k3s1"


@pytest.fixture
def release(tmp_path, monkeypatch):
    monkeypatch.setattr(k3s_fetch, "RETRY_DELAYS", (0, 0, 0))
    served = Release(tmp_path / "mirror-root", VERSION)
    served.serve()
    yield served
    served.stop()


def leftovers(destination: Path) -> list[str]:
    return sorted(p.name for p in destination.iterdir()) if destination.exists() else []


def test_fetch_verifies_and_writes_manifest(release, tmp_path):
    out = tmp_path / "k3s"
    path = k3s_fetch.fetch(VERSION, out, mirror=release.url)
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
    k3s_fetch.fetch(VERSION, tmp_path / "k3s", arches=("amd64",))
    assert release.requests


def test_corrupt_asset_is_refused_and_nothing_left(release, tmp_path):
    (release.dir / "k3s-arm64").write_bytes(b"tampered")
    out = tmp_path / "k3s"
    with pytest.raises(RackbootError, match=r"k3s-arm64: checksum mismatch \(expected [0-9a-f]{64}, got"):
        k3s_fetch.fetch(VERSION, out, mirror=release.url)
    assert leftovers(out) == []


def test_missing_asset(release, tmp_path):
    (release.dir / "k3s-airgap-images-amd64.tar.zst").unlink()
    with pytest.raises(RackbootError, match=r"k3s-airgap-images-amd64.tar.zst: HTTP 404 from http://"):
        k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url)
    assert leftovers(tmp_path / "k3s") == []


def test_asset_not_in_checksum_file(release, tmp_path):
    sums = release.dir / "sha256sum-amd64.txt"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if not line.endswith("  k3s")))
    with pytest.raises(RackbootError, match=r"^k3s: not listed in sha256sum-amd64.txt of v1.31.4\+k3s1"):
        k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url)


def test_server_error_once_then_success(release, tmp_path):
    release.fail_next = [503]
    k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url, arches=("amd64",))
    assert release.requests[0] == release.requests[1]


def test_unreachable_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(k3s_fetch, "RETRY_DELAYS", (0,))
    with pytest.raises(RackbootError, match=r"sha256sum-amd64.txt: cannot download http://127.0.0.1:9/"):
        k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror="http://127.0.0.1:9")
    assert leftovers(tmp_path / "k3s") == []


def test_failed_refetch_keeps_the_good_bundle(release, tmp_path):
    out = tmp_path / "k3s"
    k3s_fetch.fetch(VERSION, out, mirror=release.url)
    (release.dir / "k3s").write_bytes(b"tampered upstream")
    with pytest.raises(RackbootError):
        k3s_fetch.fetch(VERSION, out, mirror=release.url)
    assert leftovers(out) == [VERSION]
    k3s_bundle.verify(out / VERSION)


def test_verify_refuses_tampered_and_missing(release, tmp_path):
    path = k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url)
    (path / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"tampered")
    with pytest.raises(BadInput, match=r"k3s-airgap-images-arm64.tar.zst: checksum mismatch") as caught:
        k3s_bundle.verify(path)
    assert "./build.py fetch-k3s" in caught.value.hint
    (path / "k3s").unlink()
    with pytest.raises(BadInput, match=r"/k3s: missing"):
        k3s_bundle.verify(path)


def test_bad_version():
    with pytest.raises(BadInput, match=r"'1.31' is not a k3s release tag"):
        k3s_fetch.fetch("1.31", Path("/nonexistent"))


@pytest.mark.machine     # root: build.py image checks it before the bundle
def test_command_line_fetch_and_image_version_check(build, tmp_path):
    """fetch-k3s takes a profile and fetches the version it names; image
    refuses a bundle of another version before doing any work."""
    from firstboot.profile import load_profiles
    [example] = load_profiles([Path("rack-profiles/example.yaml")])
    wanted = example.k3s.version
    served = Release(tmp_path / "mirror-root", wanted)
    served.serve()
    try:
        result = build("fetch-k3s", "rack-profiles/example.yaml", "-o", str(tmp_path / "k3s"), "--mirror", served.url)
    finally:
        served.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "k3s" / wanted)
    other = k3s_standin_bundle.make(tmp_path / "other", "v1.30.0+k3s1")
    result = build("image", "rack-profiles/example.yaml", "-o", str(tmp_path / "out"), "--k3s-bundle", str(other))
    assert result.returncode == 2
    assert f"is v1.30.0+k3s1, but the racks want {wanted}" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bundle.json and versions


def bundle_json(path: Path) -> dict:
    return json.loads((path / "bundle.json").read_text())


def test_lying_binary_is_refused(tmp_path):
    """bundle.json, the directory and the checksums all say v1.31.5+k3s1, but
    the binary is v1.31.4+k3s1: k3s --version gives it away."""
    liar = k3s_standin_bundle.make(tmp_path, "v1.31.5+k3s1", binary_version=VERSION)
    with pytest.raises(BadInput, match=re.escape(f"{liar}/k3s: says it is k3s v1.31.4+k3s1 (k3s --version), "
                                                 f"but the bundle is v1.31.5+k3s1 ({liar}/bundle.json)")):
        k3s_bundle.verify(liar)


def test_binary_that_is_not_k3s_is_refused(tmp_path):
    path = k3s_standin_bundle.make(tmp_path, VERSION)
    for body, message in ((b"#!/bin/sh\necho hello\n", r"printed 'hello', not `k3s version VERSION"),
                          (b"#!/bin/sh\nexit 3\n", r"failed \(exit status 3\)"),
                          (os.urandom(64), r"cannot run it to ask its version")):
        rewrite(path, "k3s", body)
        with pytest.raises(BadInput, match=rf"{re.escape(str(path))}/k3s: .*{message}"):
            k3s_bundle.verify(path)


def test_binary_runs_as_nobody_with_nothing_of_the_build(tmp_path, monkeypatch):
    """It may be a tampered mirror's binary, and the build runs as root."""
    monkeypatch.setenv("RACKBOOT_TEST_SECRET", "hunter2")
    path = k3s_standin_bundle.make(tmp_path, VERSION)
    rewrite(path, "k3s", b'#!/bin/sh\necho "uid=$(id -u) groups=$(id -G) env=$(env | sort | tr "\\n" " ")"; exit 1\n')
    with pytest.raises(BadInput) as caught:
        k3s_bundle.verify(path)
    said = str(caught.value)
    assert "uid=65534 groups=65534 env=" in said      # nobody, when the build is root
    assert "hunter2" not in said and "RACKBOOT" not in said and "PATH=/usr/bin:/bin" in said


def rewrite(bundle: Path, name: str, data: bytes) -> None:
    """Replace one file of a bundle and keep its checksum file and bundle.json
    consistent (a tampered mirror would serve it so)."""
    arch = "amd64" if name in ("k3s", "k3s-airgap-images-amd64.tar.zst") else "arm64"
    (bundle / name).write_bytes(data)
    sums_path = bundle / f"sha256sum-{arch}.txt"
    lines = [line for line in sums_path.read_text().splitlines() if not line.endswith(f"  {name}")]
    sums_path.write_text("\n".join([*lines, f"{hashlib.sha256(data).hexdigest()}  {name}"]) + "\n")
    manifest = bundle_json(bundle)
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    manifest["files"][sums_path.name] = hashlib.sha256(sums_path.read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def test_only_the_verified_files_are_copied(tmp_path):
    from image import payload
    path = k3s_standin_bundle.make(tmp_path / "k3s", VERSION)
    (path / "notes.txt").write_text("an operator's notes, or a private key left here\n")
    bundle = k3s_bundle.verify(path)
    tree = tmp_path / "tree"
    payload.install_k3s(bundle, tree)
    installed = tree / payload.AGENT_DIR / "k3s" / VERSION
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        ["bundle.json", "k3s", "k3s-arm64", "k3s-airgap-images-amd64.tar.zst", "k3s-airgap-images-arm64.tar.zst",
         "sha256sum-amd64.txt", "sha256sum-arm64.txt"])
    for p in installed.iterdir():
        assert p.read_bytes() == (path / p.name).read_bytes()
        assert p.stat().st_mode & 0o777 == (0o755 if p.name.startswith("k3s") and "images" not in p.name else 0o644)
    pi = tmp_path / "pi"
    payload.install_k3s(bundle, pi, "arm64")
    assert sorted(p.name for p in (pi / payload.AGENT_DIR / "k3s" / VERSION).iterdir()) == [
        "k3s-airgap-images-arm64.tar.zst", "k3s-arm64", "sha256sum-arm64.txt"]


def test_a_file_changed_after_verify_is_not_copied(tmp_path):
    from image import payload
    path = k3s_standin_bundle.make(tmp_path / "k3s", VERSION)
    bundle = k3s_bundle.verify(path)
    (path / "k3s-airgap-images-amd64.tar.zst").write_bytes(b"swapped in after the check")
    with pytest.raises(RackbootError, match=r"k3s-airgap-images-amd64.tar.zst: changed since it was verified"):
        payload.install_k3s(bundle, tmp_path / "tree")
    (path / "k3s-airgap-images-amd64.tar.zst").unlink()
    (path / "k3s-airgap-images-amd64.tar.zst").symlink_to("/etc/shadow")
    with pytest.raises(RackbootError, match=r"k3s-airgap-images-amd64.tar.zst: cannot read it"):
        payload.install_k3s(bundle, tmp_path / "tree2")
    assert not (tmp_path / "tree2" / payload.AGENT_DIR / "k3s" / VERSION / "k3s-airgap-images-amd64.tar.zst").exists()


# ------------------------------------------------------------------ bad bundles through the command line

def corrupt_manifest(text):
    return lambda bundle: (bundle / "bundle.json").write_bytes(text if isinstance(text, bytes) else text.encode())


def edit_manifest(change):
    def edit(bundle):
        document = bundle_json(bundle)
        change(document)
        (bundle / "bundle.json").write_text(json.dumps(document))
    return edit


def link(name, target):
    def make(bundle):
        (bundle / name).unlink(missing_ok=True)
        (bundle / name).symlink_to(target)
    return make


def swap_binary_for_another_version(bundle):
    other = k3s_standin_bundle.make(bundle.parent / "elsewhere", "v1.30.0+k3s1")
    rewrite(bundle, "k3s", (other / "k3s").read_bytes())


def make_fifo(bundle):
    os.mkfifo(bundle / "extra")


BAD_BUNDLES = {
    # bundle.json malformed
    "not JSON": (corrupt_manifest("{"), "bundle.json: not JSON"),
    "not UTF-8": (corrupt_manifest(b'{"version": "\xff"}'), "bundle.json: not JSON"),
    "a list": (corrupt_manifest("[]"), "bundle.json: not a JSON object but list"),
    "a string": (corrupt_manifest('"v1.31.4+k3s1"'), "bundle.json: not a JSON object but str"),
    "no version": (edit_manifest(lambda d: d.pop("version")), "bundle.json: version: missing"),
    "version a number": (edit_manifest(lambda d: d.update(version=1.31)), "bundle.json: version: 1.31 is not"),
    "version a channel": (edit_manifest(lambda d: d.update(version="stable")), "bundle.json: version: 'stable' is not"),
    "version with a newline": (edit_manifest(lambda d: d.update(version=VERSION + "\n")), "is not a k3s release tag"),
    "arches a string": (edit_manifest(lambda d: d.update(arches="amd64")), "bundle.json: arches: 'amd64' is not"),
    "unknown arch": (edit_manifest(lambda d: d.update(arches=["amd64", "riscv64"])), "bundle.json: arches:"),
    "arch twice": (edit_manifest(lambda d: d.update(arches=["amd64", "amd64"])), "bundle.json: arches:"),
    "files a list": (edit_manifest(lambda d: d.update(files=[])), "bundle.json: files: not a mapping"),
    "files not sums": (edit_manifest(lambda d: d["files"].update(k3s="xyz")), "bundle.json: files: not a mapping"),
    "files lists more": (edit_manifest(lambda d: d["files"].update({"notes.txt": "0" * 64})),
                         "bundle.json: files: lists 'notes.txt'"),
    "files lists less": (edit_manifest(lambda d: d["files"].pop("k3s-arm64")),
                         "bundle.json: files: does not list 'k3s-arm64'"),
    "unknown key": (edit_manifest(lambda d: d.update(url="http://x")), "bundle.json: unknown key 'url'"),
    "a terminal escape as a name": (edit_manifest(lambda d: d["files"].update({"\x1b[2J": "0" * 64})),
                                    "bundle.json: files: lists '\\x1b[2J'"),
    "standin not a boolean": (edit_manifest(lambda d: d.update(standin="yes")), "bundle.json: standin:"),
    "too big": (corrupt_manifest(" " * (1 << 17)), "bundle.json: larger than"),
    # bundle.json lies
    "another version": (edit_manifest(lambda d: d.update(version="v1.31.5+k3s1")),
                        "bundle.json: says version v1.31.5+k3s1, but the bundle's directory is named v1.31.4+k3s1"),
    "other checksums": (edit_manifest(lambda d: d["files"].update(k3s="0" * 64)),
                        f"bundle.json: lists k3s with sha256 {'0' * 64}, but the file's is"),
    "binary of another version": (swap_binary_for_another_version,
                                  "k3s: says it is k3s v1.30.0+k3s1 (k3s --version), but the bundle is v1.31.4+k3s1"),
    # not regular files
    "binary a link": (link("k3s", "/usr/bin/true"), "k3s: a symbolic link; a k3s bundle holds regular files only"),
    "images a link to a secret": (link("k3s-airgap-images-amd64.tar.zst", "/etc/shadow"),
                                  "k3s-airgap-images-amd64.tar.zst: a symbolic link"),
    "bundle.json a link": (link("bundle.json", "/etc/hostname"), "bundle.json: a symbolic link"),
    "checksums a link": (link("sha256sum-arm64.txt", "/dev/null"), "sha256sum-arm64.txt: a symbolic link"),
    "a FIFO": (make_fifo, "extra: not a regular file"),
    "a directory": (lambda b: (b / "images.d").mkdir(), "images.d: a directory"),
    # checksum files
    "CRLF checksums": (lambda b: (b / "sha256sum-amd64.txt").write_bytes(
        (b / "sha256sum-amd64.txt").read_bytes().replace(b"\n", b"\r\n")), "sha256sum-amd64.txt:1: "),
    "checksums list a file twice": (lambda b: (b / "sha256sum-arm64.txt").write_bytes(
        (b / "sha256sum-arm64.txt").read_bytes() * 2), "sha256sum-arm64.txt:3: k3s-arm64 is listed twice"),
}


@pytest.mark.machine     # root: build.py image checks it before the bundle
@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_bad_bundle_is_refused_before_any_work(build, tmp_path, case):
    spoil, message = BAD_BUNDLES[case]
    bundle = k3s_standin_bundle.make(tmp_path / "k3s", VERSION)
    spoil(bundle)
    result = build("image", "rack-profiles/example.yaml", "-o", str(tmp_path / "out"), "--k3s-bundle", str(bundle))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(bundle) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "hint: " in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.machine     # root: build.py netboot checks it before the bundle
def test_renamed_bundle_is_refused(build, tmp_path):
    bundle = k3s_standin_bundle.make(tmp_path / "k3s", VERSION)
    renamed = bundle.rename(bundle.with_name("v1.31.9+k3s1"))
    result = build("netboot", "rack-profiles/example.yaml", "-o", str(tmp_path / "out"), "--k3s-bundle", str(renamed))
    assert result.returncode == 2
    assert f"{renamed}/bundle.json: says version {VERSION}, but the bundle's directory is named v1.31.9+k3s1" in result.stderr
    assert not (tmp_path / "out").exists()
    (renamed / "bundle.json").unlink()
    nameless = renamed.rename(renamed.with_name("latest"))
    result = build("sdcard", "rack-profiles/example.yaml", "-o", str(tmp_path / "out"), "--k3s-bundle", str(nameless))
    assert result.returncode == 2 and f"{nameless}: cannot tell the k3s version" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ pins


def test_fetch_checks_the_pins(release, tmp_path):
    pins = tmp_path / "pins"
    (pins / VERSION).mkdir(parents=True)
    for arch in ("amd64", "arm64"):
        (pins / VERSION / f"sha256sum-{arch}.txt").write_bytes((release.dir / f"sha256sum-{arch}.txt").read_bytes())
    path = k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url, pins=pins)
    k3s_bundle.verify(path, pins=pins)
    # A tampered mirror serves a binary with a checksum file to match: only the pin catches it.
    rewrite_release(release, "k3s-arm64", b"#!/bin/sh\necho pwned\n")
    out = tmp_path / "again"
    release.requests.clear()
    with pytest.raises(RackbootError) as caught:
        k3s_fetch.fetch(VERSION, out, mirror=release.url, pins=pins)
    message = str(caught.value)
    assert f"{release.url}/v1.31.4%2Bk3s1/sha256sum-arm64.txt: differs from the pinned {pins}/{VERSION}/sha256sum-arm64.txt" \
        in message
    assert "tampered" in caught.value.hint
    assert leftovers(out) == []
    assert release.requests[-1].endswith("/sha256sum-arm64.txt")     # nothing fetched past the checksum file
    # Without the pin the same mirror is believed: that is what pins are for.
    k3s_fetch.fetch(VERSION, tmp_path / "unpinned", mirror=release.url, pins=tmp_path / "no-pins")


def test_verify_checks_the_pins(tmp_path):
    bundle = k3s_standin_bundle.make(tmp_path / "k3s", VERSION)
    pins = tmp_path / "pins"
    k3s_fetch.pin(bundle, pins)
    k3s_bundle.verify(bundle, pins=pins)
    rewrite(bundle, "k3s-airgap-images-amd64.tar.zst", b"other images")
    with pytest.raises(BadInput, match=re.escape(f"{bundle}/sha256sum-amd64.txt: differs from the pinned "
                                                 f"{pins}/{VERSION}/sha256sum-amd64.txt")):
        k3s_bundle.verify(bundle, pins=pins)


def test_a_pin_for_one_architecture_only(release, tmp_path):
    pins = tmp_path / "pins"
    (pins / VERSION).mkdir(parents=True)
    (pins / VERSION / "sha256sum-amd64.txt").write_bytes((release.dir / "sha256sum-amd64.txt").read_bytes())
    with pytest.raises(RackbootError, match=re.escape(f"{pins}/{VERSION}/sha256sum-arm64.txt: missing; ")):
        k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url, pins=pins)


def test_mirror_serving_a_malformed_checksum_file(release, tmp_path):
    sums = release.dir / "sha256sum-amd64.txt"
    sums.write_bytes(sums.read_bytes() + sums.read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(RackbootError, match=re.escape(f"{release.url}/v1.31.4%2Bk3s1/sha256sum-amd64.txt:4: "
                                                      "k3s is listed twice")):
        k3s_fetch.fetch(VERSION, tmp_path / "k3s", mirror=release.url)
    assert leftovers(tmp_path / "k3s") == []


def test_command_line_pin_then_catch_a_tampered_mirror(release, build, tmp_path):
    pins = tmp_path / "pins"
    pins.mkdir()
    result = build("fetch-k3s", VERSION, "-o", str(tmp_path / "k3s"), "--mirror", release.url, "--pins", str(pins),
                   "--pin")
    assert result.returncode == 0, result.stderr
    for arch in ("amd64", "arm64"):
        pin = pins / VERSION / f"sha256sum-{arch}.txt"
        assert pin.read_bytes() == (release.dir / pin.name).read_bytes()
        assert f"pinned {pin}" in result.stderr
    rewrite_release(release, "k3s", b"#!/bin/sh\necho 'k3s version v1.31.4+k3s1 (evil)'\n")
    result = build("fetch-k3s", VERSION, "-o", str(tmp_path / "k3s2"), "--mirror", release.url, "--pins", str(pins))
    assert result.returncode == 1
    assert f"differs from the pinned {pins}/{VERSION}/sha256sum-amd64.txt" in result.stderr
    assert release.url in result.stderr
    assert sorted(p.name for p in (tmp_path / "k3s2").iterdir()) == [".rackboot-output"]
    missing = build("fetch-k3s", VERSION, "-o", str(tmp_path / "k3s3"), "--pins", str(tmp_path / "no-such-pins"))
    assert missing.returncode == 2 and f"{tmp_path}/no-such-pins: no such directory (--pins)" in missing.stderr
    assert not (tmp_path / "k3s3").exists()


def test_no_release_is_pinned_without_its_real_checksums():
    """Pins come from real releases only (image/k3s-pins/README.md); each is a
    well-formed checksum file listing the assets rackboot fetches."""
    from firstboot import checksums
    for directory in sorted(p for p in k3s_pins.PINS.iterdir() if p.is_dir()):
        k3s_bundle.check_version(directory.name)
        for arch in k3s_bundle.ARCHES:
            sums = checksums.read(directory / f"sha256sum-{arch}.txt")
            assert {k3s_bundle.binary_name(arch), k3s_bundle.images_name(arch)} <= set(sums)


def rewrite_release(release, name: str, data: bytes) -> None:
    """A tampered mirror: the asset and its line in the checksum file replaced."""
    arch = "arm64" if name.endswith("arm64") or "arm64" in name else "amd64"
    (release.dir / name).write_bytes(data)
    sums = release.dir / f"sha256sum-{arch}.txt"
    lines = [line for line in sums.read_text().splitlines() if not line.endswith(f"  {name}")]
    sums.write_text("\n".join([*lines, f"{hashlib.sha256(data).hexdigest()}  {name}"]) + "\n")


@pytest.mark.parametrize("mirror", ["notaurl", "http://", "https://host/with space", "http://host/?q=1",
                                    "ftp://host/k3s", "https://host/\x1b[2J"])
def test_bad_mirror_is_refused_before_any_work(build, tmp_path, mirror):
    result = build("fetch-k3s", VERSION, "-o", str(tmp_path / "k3s"), "--mirror", mirror)
    assert result.returncode == 2, result.stderr
    assert f"--mirror {mirror!r}: not a mirror URL" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "k3s").exists()


# ------------------------------------------------------------ release channels (install.sh's get_release_version)


def test_a_channel_resolves_as_install_sh_does(release):
    release.channels["v1.31"] = VERSION
    assert k3s_fetch.resolve_channel("v1.31", release.channel_url) == VERSION
    assert release.requests == ["/v1-release/channels/v1.31", f"/k3s-io/k3s/releases/tag/{VERSION}"]


def test_the_channel_server_comes_from_the_environment_or_is_k3s_s(release, monkeypatch):
    monkeypatch.delenv("RACKBOOT_K3S_CHANNEL_URL", raising=False)
    assert k3s_fetch.channel_url(None) == "https://update.k3s.io/v1-release/channels"
    monkeypatch.setenv("RACKBOOT_K3S_CHANNEL_URL", release.channel_url + "/")
    assert k3s_fetch.channel_url(None) == release.channel_url
    with pytest.raises(BadInput, match=r"--channel-url 'file:///srv/channels': not a channel server URL"):
        k3s_fetch.channel_url("file:///srv/channels")


def test_an_unknown_channel_is_named_with_the_servers_answer(release):
    with pytest.raises(RackbootError, match=r"k3s channel v1.99: HTTP 404 from http://127.0.0.1:\d+/v1-release"):
        k3s_fetch.resolve_channel("v1.99", release.channel_url)
    with pytest.raises(BadInput, match=r"'../etc' is not a k3s release channel"):
        k3s_fetch.resolve_channel("../etc", release.channel_url)
    assert release.requests == ["/v1-release/channels/v1.99"]


@pytest.mark.parametrize("answer", ["../../../etc", "v1.31.4+k3s1/..", "..%2Fv1.31.4+k3s1", "v1.31.4+k3s1%0Aevil",
                                    "v1.31", "latest", "v1.31.4+k3s1?x=../y"])
def test_a_channel_server_answering_anything_but_a_release_tag_is_refused(release, tmp_path, answer):
    release.channels["stable"] = answer
    with pytest.raises(RackbootError, match=r"k3s channel stable: .* is not a k3s release tag"):
        k3s_fetch.resolve_channel("stable", release.channel_url)


def test_fetch_k3s_fetches_what_a_channel_points_to(build, release, tmp_path):
    out = tmp_path / "k3s"
    result = build("fetch-k3s", "stable", "-o", str(out), "--mirror", release.url,
                   "--channel-url", release.channel_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / VERSION)] and leftovers(out) == [".rackboot-output", VERSION]
    assert f"k3s channel stable is {VERSION}" in result.stderr
    assert k3s_bundle.verify(out / VERSION).version == VERSION


def test_fetch_k3s_writes_nothing_for_a_channel_the_server_does_not_know(build, release, tmp_path):
    release.channels["stable"] = "../../escape"
    for channel, shown in (("v1.99", "HTTP 404"), ("stable", "is not a k3s release tag")):
        result = build("fetch-k3s", channel, "-o", str(tmp_path / "k3s"), "--mirror", release.url,
                       "--channel-url", release.channel_url)
        assert result.returncode != 0 and shown in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "k3s").exists()
    assert all(request.startswith(("/v1-release/channels/", "/k3s-io/k3s/releases/tag/"))   # no download
               for request in release.requests)


# ------------------------------------------------------------------ one image, racks on several versions

def test_racks_of_one_image_each_get_their_version(tmp_path):
    """--k3s-bundle once per version the racks want: each rack gets its own;
    a version no rack wants, a version twice, or a wanted one missing is
    refused before any work, naming it."""
    import dataclasses
    import types
    from firstboot.profile import load_profiles
    from image import verbs
    [example] = load_profiles([Path("rack-profiles/example.yaml")])
    newer = dataclasses.replace(example, rack="newer", k3s=dataclasses.replace(example.k3s, version="v1.32.1+k3s1"))
    ours = example.k3s.version
    old = k3s_standin_bundle.make(tmp_path / "a", ours)
    new = k3s_standin_bundle.make(tmp_path / "b", "v1.32.1+k3s1")
    chosen = verbs._k3s_bundles(types.SimpleNamespace(k3s_bundle=[new, old]), [example, newer])
    assert {rack: b.version for rack, b in chosen.items()} == {"example": ours, "newer": "v1.32.1+k3s1"}
    assert verbs._k3s_bundles(types.SimpleNamespace(k3s_bundle=None), [example, newer]) == \
        {"example": None, "newer": None}
    with pytest.raises(BadInput, match=r"no --k3s-bundle of v1\.32\.1\+k3s1, which newer want"):
        verbs._k3s_bundles(types.SimpleNamespace(k3s_bundle=[old]), [example, newer])
    with pytest.raises(BadInput, match=r"is v1\.32\.1\+k3s1, but the racks want " + re.escape(ours)):
        verbs._k3s_bundles(types.SimpleNamespace(k3s_bundle=[old, new]), [example])
    again = k3s_standin_bundle.make(tmp_path / "c", ours)
    with pytest.raises(BadInput, match=r"are both " + re.escape(ours)):
        verbs._k3s_bundles(types.SimpleNamespace(k3s_bundle=[old, again]), [example, newer])
