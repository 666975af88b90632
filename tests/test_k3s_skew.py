"""Kubernetes' version skew policy on the jumphost's k3s upgrades
(firstboot/k3s_versions.py): a patch release or the next minor proceeds; a
skipped minor or an older minor is refused before anything is placed, so the
running k3s is left as it was. The installed version is what the installed
stand-in binary says (`k3s --version`), as with real k3s."""

import pytest

from firstboot import k3s_versions
from firstboot.errors import BadInput, RackbootError
from firstboot.layout import Layout, Role
from tests.doubles import k3s_standin_bundle
from tests.test_k3s_install import VERSION, _machine, install


@pytest.fixture
def jumphost(tmp_path, monkeypatch):
    """A jumphost running VERSION (v1.31.4+k3s1) whose image has other versions' bundles too."""
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    for version in ("v1.31.5+k3s1", "v1.32.0+k3s1", "v1.33.0+k3s1", "v1.30.8+k3s1"):
        k3s_standin_bundle.make(layout.k3s_bundles, version)
    install(layout)
    assert k3s_versions.installed_version(layout.bin_dir / "k3s") == VERSION
    calls.clear()
    return layout, calls


def installed_files(layout: Layout) -> dict:
    return {path: path.read_bytes() for path in (layout.bin_dir / "k3s", layout.k3s_config, layout.node_password,
                                                   layout.k3s_images / "k3s-airgap-images-amd64.tar.zst")}


@pytest.mark.parametrize("wanted", ["v1.31.5+k3s1", "v1.32.0+k3s1"])
def test_a_patch_release_or_the_next_minor_is_installed(jumphost, wanted):
    layout, calls = jumphost
    result = install(layout, version=wanted)
    assert result["version"] == wanted and result["changed"] == ["binary", "images"]
    assert k3s_versions.installed_version(layout.bin_dir / "k3s") == wanted
    assert calls == [("ensure_running", "k3s.service", True)]


@pytest.mark.parametrize("wanted, hint", [("v1.33.0+k3s1", "upgrade one minor at a time: first an image or "
                                                           "bundle of v1.32 (./build.py fetch-k3s v1.32)"),
                                          ("v1.30.8+k3s1", "k3s does not go back to an older minor")])
def test_a_skipped_or_older_minor_is_refused_and_k3s_left_as_it_is(jumphost, wanted, hint):
    layout, calls = jumphost
    before = installed_files(layout)
    with pytest.raises(BadInput) as caught:
        install(layout, version=wanted)
    assert caught.value.exit_status == 2
    message = str(caught.value)
    assert f"k3s {VERSION} is installed and this image has {wanted}" in message
    assert "Kubernetes' version skew policy allows one minor version at a time" in message
    assert f"cannot move from v1.31 to {wanted[:5]}" in message and hint in caught.value.hint
    assert installed_files(layout) == before and calls == []       # nothing placed, nothing (re)started


def test_a_pi_follows_its_jumphost_without_the_check(tmp_path, monkeypatch):
    """The rule is the server's: a Pi's kubelet runs what its jumphost serves."""
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    k3s_standin_bundle.make(layout.k3s_bundles, "v1.33.0+k3s1")
    install(layout, role=Role.PI, node="pi-1")
    assert install(layout, role=Role.PI, node="pi-1", version="v1.33.0+k3s1")["changed"] == ["binary", "images"]


@pytest.mark.parametrize("installed, wanted, allowed", [
    (None, "v1.33.0+k3s1", True), ("v1.31.4+k3s1", "v1.31.4+k3s2", True), ("v1.31.4+k3s1", "v1.31.2+k3s1", True),
    ("v1.31.9+k3s1", "v1.32.0-rc1+k3s1", True), ("v1.31.4+k3s1", "v1.34.1+k3s1", False),
    ("v1.31.4+k3s1", "v2.31.4+k3s1", False), ("v1.31.4+k3s1", "v2.0.0+k3s1", False)])
def test_the_rule(installed, wanted, allowed):
    if allowed:
        k3s_versions.check_upgrade(installed, wanted)
    else:
        with pytest.raises(BadInput, match="version skew policy"):
            k3s_versions.check_upgrade(installed, wanted)


def test_a_binary_that_does_not_say_a_k3s_version_is_named(tmp_path):
    binary = tmp_path / "k3s"
    binary.write_text("#!/bin/sh\necho 'k3s version ../../x (abc)'\n")
    binary.chmod(0o755)
    with pytest.raises(RackbootError, match=r"printed 'k3s version ../../x \(abc\)', not `k3s version VERSION"):
        k3s_versions.installed_version(binary)
    assert k3s_versions.installed_version(tmp_path / "none") is None
