"""build.py's preflight (image/verbs.py): everything a verb needs is checked
before any slow step, so bad input exits 2 in well under a second, writes
nothing and never reaches mmdebstrap. Each case here used to be found only
after the root filesystem was built.

A stand-in mmdebstrap first on PATH records any call: the positive control
shows that good input does reach it."""

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firstboot.errors import BadInput
from firstboot.profile import load_profiles
from image import payload
from tests.lib.machine import REPO

FAST = 5.0      # seconds; the checks take a fraction of one


@pytest.fixture
def profiles(tmp_path) -> Path:
    copy = tmp_path / "rack-profiles"
    shutil.copytree(REPO / "rack-profiles", copy)
    return copy


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """mmdebstrap that records its call and fails."""
    directory = tmp_path / "bin"
    directory.mkdir()
    mmdebstrap = directory / "mmdebstrap"
    mmdebstrap.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'mmdebstrap-called'}\nexit 1\n")
    mmdebstrap.chmod(0o755)
    return directory


def build(fake_bin: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """build.py with the stand-in mmdebstrap, and no cached root filesystem
    to reuse: a check left until after the rootfs step would call it."""
    if args[0] in ("image", "netboot", "sdcard") and "--cache-dir" not in args:
        args = (*args, "--no-cache", "--cache-dir", str(fake_bin.parent / "cache"))
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "build.py"), *args], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - start


def assert_refused_fast(result, elapsed, message, out: Path, tmp_path: Path):
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < FAST, f"took {elapsed:.1f} s"
    assert not out.exists()
    assert not (tmp_path / "mmdebstrap-called").exists()


def add_rack(directory: Path, name: str, extra: str = "") -> Path:
    """A second rack with one Pi (example.yaml's Pis, renamed)."""
    text = (directory / "example.yaml").read_text()
    [example] = load_profiles([directory / "example.yaml"])
    text = text.replace(f"rack: {example.rack}", f"rack: {name}", 1)
    text = text.replace(example.jumphost.hostname, f"jh-{name}")
    # An attach port is each rack's own (check refuses two racks with one); the copy needs none.
    text = text.replace(f"\n  attach_port: {example.k3s.attach_port}", "\n  # no attach_port")
    for pi in example.pis:     # Pis are each in one rack
        text = text.replace(pi.name, f"{pi.name}-{name}").replace(pi.serial, pi.serial[::-1])
        text = text.replace(pi.mac, pi.mac.replace("dc:a6:32", "e4:5f:01"))
    path = directory / f"{name}.yaml"
    path.write_text(text + extra)
    return path


def test_profiles_from_two_directories(profiles, fake_bin, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(profiles, other)
    add_rack(other, "second")
    out = tmp_path / "out"
    result, elapsed = build(fake_bin, "image", str(profiles / "example.yaml"), str(other / "second.yaml"),
                            "-o", str(out))
    assert_refused_fast(result, elapsed, "the racks of one image must come from one directory", out, tmp_path)


def test_units_that_differ_between_racks(profiles, fake_bin, tmp_path):
    add_rack(profiles, "second", "netboot:\n  rancher_storage: sd\n")
    out = tmp_path / "out"
    result, elapsed = build(fake_bin, "image", str(profiles / "example.yaml"), str(profiles / "second.yaml"),
                            "-o", str(out))
    assert_refused_fast(result, elapsed, "need different var-lib-rancher.mount (2 versions)", out, tmp_path)


@pytest.mark.parametrize("verb", ["netboot", "sdcard"])
def test_pi_root_for_a_rack_without_pis(profiles, fake_bin, tmp_path, verb):
    (profiles / "nopis.yaml").write_text("rack: nopis\njumphost:\n  hostname: jh-nopis\n")
    out = tmp_path / "out"
    result, elapsed = build(fake_bin, verb, str(profiles / "nopis.yaml"), "-o", str(out))
    message = "rack nopis has no Pis" if verb == "sdcard" else "need different rackboot-firstboot.service"
    assert_refused_fast(result, elapsed, message, out, tmp_path)


def test_bad_k3s_bundle_before_any_slow_step(profiles, fake_bin, tmp_path):
    out = tmp_path / "out"
    result, elapsed = build(fake_bin, "image", str(profiles / "example.yaml"), "-o", str(out),
                            "--k3s-bundle", str(tmp_path / "no-such-bundle"))
    assert_refused_fast(result, elapsed, "no such k3s bundle directory", out, tmp_path)


def test_good_input_does_reach_mmdebstrap(profiles, fake_bin, tmp_path):
    """The control: the stand-in is found, so the cases above did not reach it."""
    out = tmp_path / "out"
    result, _ = build(fake_bin, "image", str(profiles / "example.yaml"), "-o", str(out),
                      "--no-cache", "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1 and "exit status 1" in result.stderr, result.stderr
    assert (tmp_path / "mmdebstrap-called").exists()
    assert list((tmp_path / "cache").iterdir()) == []      # its staging directory is gone


def test_manifests_outside_the_profiles_directory(profiles):
    """Profile loading refuses such manifests; install_profiles' own check
    (payload.profile_files, which the preflight calls) is the last guard."""
    [profile] = load_profiles([profiles / "example.yaml"])
    outside = dataclasses.replace(profile, manifests=[*profile.manifests, Path("/etc/hostname")])
    with pytest.raises(BadInput, match="/etc/hostname: manifests that go into an image must be inside "):
        payload.profile_files([outside])
    files = payload.profile_files([profile])
    assert files[profile.source.resolve()] == Path("example.yaml")
    assert Path("defaults.yaml") in files.values()
