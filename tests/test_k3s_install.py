"""firstboot/k3s.py's install in process, on a machine tree under tmp_path
(Layout(tmp_path)) with a stand-in bundle: which files it places with which
modes, what it reports as changed, when it reloads systemd and restarts k3s,
the links install.sh makes, the node passwords (which must never change
between agent versions: k3s's datastore holds their hashes), and the
refusals of an image without the bundle, config or token. systemctl is
recorded, not run: tests/test_k3s_agent.py runs the same install against the
systemctl stand-in in a pretend machine."""

import os
import stat

import pytest

from firstboot import k3s
from firstboot.errors import RackbootError
from firstboot.layout import Layout, Role
from tests.doubles import k3s_standin_bundle

VERSION = "v1.31.4+k3s1"
RACK = "rack-a"


def _machine(layout: Layout, tmp_path, monkeypatch) -> list:
    """An amd64 machine's tree at layout with the image's bundle, config and
    token, and no kubectl, crictl or ctr of its own; returns its systemctl calls."""
    k3s_standin_bundle.make(layout.k3s_bundles, VERSION)
    for role, node in ((Role.JUMPHOST, "jump-1"), (Role.PI, "pi-1")):
        config = layout.k3s_config_source(RACK, role, node)
        config.parent.mkdir(parents=True)
        config.write_text(f"# {role} config\n")
    layout.token_file.parent.mkdir(parents=True)
    layout.token_file.write_bytes(b"rack-token\n")
    system_bin = tmp_path / "system-bin"
    system_bin.mkdir()
    calls = []
    monkeypatch.setattr(k3s.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(k3s, "SYSTEM_BIN_PATH", str(system_bin))
    monkeypatch.setattr(k3s, "systemctl", lambda *args: calls.append(("systemctl", *args)))

    def ensure_running(unit, restart):
        calls.append(("ensure_running", unit, restart))
        return "restarted" if restart else "unchanged"
    monkeypatch.setattr(k3s, "ensure_running", ensure_running)
    return calls


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def install(layout, role=Role.JUMPHOST, node="jump-1", token_changed=False, version=VERSION):
    return k3s.install(layout, RACK, role, node, version, token_changed)


def test_first_install_places_everything_and_starts_the_server(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    result = install(layout)
    assert result == {"version": VERSION, "arch": "amd64", "service": "k3s.service", "started": "restarted",
                      "changed": ["binary", "images", "config", "node-password", "unit"]}
    assert calls == [("systemctl", "daemon-reload"), ("ensure_running", "k3s.service", True)]
    bundle = layout.k3s_bundle(VERSION)
    assert (layout.bin_dir / "k3s").read_bytes() == (bundle / "k3s").read_bytes()
    images = layout.k3s_images / "k3s-airgap-images-amd64.tar.zst"
    assert images.read_bytes() == (bundle / "k3s-airgap-images-amd64.tar.zst").read_bytes()
    assert layout.k3s_config.read_text() == "# jumphost config\n"
    unit = layout.unit("k3s.service")
    assert unit.read_bytes() == k3s.unit_text(Role.JUMPHOST)
    assert {path.name: mode(path) for path in (layout.bin_dir / "k3s", images, layout.k3s_config,
                                                 layout.node_password, unit)} == {
        "k3s": 0o755, "k3s-airgap-images-amd64.tar.zst": 0o644, "config.yaml": 0o600, "password": 0o600,
        "k3s.service": 0o644}
    for name in ("kubectl", "crictl", "ctr"):       # install.sh's links, none of them on the system
        assert os.readlink(layout.bin_dir / name) == "k3s"


def test_a_second_install_changes_nothing_and_restarts_nothing(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    install(layout)
    calls.clear()
    result = install(layout)
    assert result["changed"] == [] and result["started"] == "unchanged"
    assert calls == [("ensure_running", "k3s.service", False)]


def test_a_changed_token_alone_restarts_k3s_without_a_reload(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    install(layout)
    calls.clear()
    assert install(layout, token_changed=True)["changed"] == ["token"]
    assert calls == [("ensure_running", "k3s.service", True)]
    calls.clear()
    layout.k3s_config_source(RACK, Role.JUMPHOST, "jump-1").write_text("# new config\n")
    assert install(layout, token_changed=True)["changed"] == ["config", "token"]
    assert calls == [("ensure_running", "k3s.service", True)]


def test_a_link_the_system_has_is_not_made(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    own = tmp_path / "system-bin/ctr"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    install(layout)
    assert not os.path.lexists(layout.bin_dir / "ctr")
    assert os.readlink(layout.bin_dir / "crictl") == "k3s"
    (layout.bin_dir / "crictl").unlink()
    (layout.bin_dir / "kubectl").unlink()
    (layout.bin_dir / "kubectl").write_text("an admin's own\n")    # an existing file is left as it is
    install(layout)
    assert os.readlink(layout.bin_dir / "crictl") == "k3s"
    assert (layout.bin_dir / "kubectl").read_text() == "an admin's own\n"


def test_a_pi_installs_the_agent_with_its_own_config_and_password(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    result = install(layout, Role.PI, "pi-1")
    assert result["service"] == "k3s-agent.service"
    assert calls == [("systemctl", "daemon-reload"), ("ensure_running", "k3s-agent.service", True)]
    assert layout.unit("k3s-agent.service").read_bytes() == k3s.unit_text(Role.PI)
    assert layout.k3s_config.read_text() == "# pi config\n"
    assert layout.node_password.read_bytes() == PI_PASSWORD + b"\n" and mode(layout.node_password) == 0o600
    # Rewritten at every run: a Pi must present the same password under the same name.
    layout.node_password.write_bytes(b"something else\n")
    assert install(layout, Role.PI, "pi-1")["changed"] == ["node-password"]
    assert layout.node_password.read_bytes() == PI_PASSWORD + b"\n"


def test_the_jumphosts_password_is_written_once_and_kept_across_token_rotations(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    install(layout)
    assert layout.node_password.read_bytes() == SERVER_PASSWORD + b"\n"
    layout.token_file.write_bytes(b"rotated-token\n")
    assert install(layout, token_changed=True)["changed"] == ["token"]
    assert layout.node_password.read_bytes() == SERVER_PASSWORD + b"\n"


# Pinned: k3s's datastore keeps these passwords' hashes, so an agent that
# derived them differently would have its own nodes rejected.
PI_PASSWORD = b"169797fbe89164f6bb4aa7ab658b2b12dc8fe6f28eb33c5d496334ed830687cd"      # rack-a, pi-1
SERVER_PASSWORD = b"d10f0c24406325be23b3b4733ee73bb67172c9fe9c999b86707d5d774477d3d9"  # rack-token, rack-a, jump-1


def test_node_passwords_are_as_they_always_were():
    assert k3s.node_password(RACK, "pi-1") == PI_PASSWORD
    assert k3s.server_node_password(b"rack-token", RACK, "jump-1") == SERVER_PASSWORD


def test_the_units_run_k3s_as_install_sh_writes_them():
    server, agent = k3s.unit_text(Role.JUMPHOST).decode(), k3s.unit_text(Role.PI).decode()
    assert server.startswith("# k3s server. Written by rackboot's first-boot agent")
    assert "\nExecStart=/usr/local/bin/k3s server\n" in server
    assert "\nExecStart=/usr/local/bin/k3s agent\n" in agent
    assert "\nEnvironmentFile=-/etc/systemd/system/%N.service.env\n" in server
    assert (k3s.service_name(Role.JUMPHOST), k3s.service_name(Role.PI)) == ("k3s.service", "k3s-agent.service")


@pytest.mark.parametrize("machine_name, arch", [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_the_machines_architecture_names_its_bundle_files(monkeypatch, machine_name, arch):
    monkeypatch.setattr(k3s.platform, "machine", lambda: machine_name)
    assert k3s.machine_arch() == arch


def test_an_architecture_k3s_has_no_build_for_is_named(monkeypatch):
    monkeypatch.setattr(k3s.platform, "machine", lambda: "riscv64")
    with pytest.raises(RackbootError) as caught:
        k3s.machine_arch()
    assert str(caught.value) == "k3s has no build for this machine's architecture (riscv64)"


def test_an_arm64_machine_installs_the_arm64_files(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    monkeypatch.setattr(k3s.platform, "machine", lambda: "aarch64")
    result = install(layout, Role.PI, "pi-1")
    assert result["arch"] == "arm64"
    assert (layout.bin_dir / "k3s").read_bytes() == (layout.k3s_bundle(VERSION) / "k3s-arm64").read_bytes()
    assert (layout.k3s_images / "k3s-airgap-images-arm64.tar.zst").exists()


def test_a_version_the_image_does_not_have_is_named_with_those_it_has(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    with pytest.raises(RackbootError) as caught:
        install(layout, version="v1.32.0+k3s1")
    missing = layout.k3s_bundle("v1.32.0+k3s1")
    assert str(caught.value) == (f"k3s v1.32.0+k3s1: not on this machine ({missing} missing, none pushed; it has "
                                 f"{VERSION})")
    assert caught.value.hint == ("push it with the rack's bundle (./build.py push PROFILE --to HOST --k3s-bundle "
                                 "DIR, the DIR ./build.py fetch-k3s VERSION -o DIR wrote), build the image with "
                                 "--k3s-bundle DIR, or set k3s.version in the profile to one it has")
    k3s_standin_bundle.make(layout.k3s_bundles, "v1.30.8+k3s1")
    with pytest.raises(RackbootError) as caught:
        install(layout, version="v1.32.0+k3s1")
    assert f"it has v1.30.8+k3s1, {VERSION})" in str(caught.value)
    empty = Layout(tmp_path / "bare")
    with pytest.raises(RackbootError) as caught:
        k3s.find_bundle(empty, VERSION, "amd64")
    assert "it has no k3s bundle)" in str(caught.value)
    assert not (layout.bin_dir / "k3s").exists()


def test_bundle_problems_say_what_to_do(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    bundle = layout.k3s_bundle(VERSION)
    (bundle / "k3s").write_bytes(b"tampered")
    with pytest.raises(RackbootError) as caught:
        install(layout)
    assert str(caught.value) == f"{bundle / 'k3s'}: does not match sha256sum-amd64.txt (corrupt image?)"
    assert caught.value.hint == "reflash the image, or rebuild it with a freshly fetched bundle"
    (bundle / "sha256sum-amd64.txt").write_bytes(b"not a checksum file\n")
    with pytest.raises(RackbootError) as caught:
        install(layout)
    assert str(caught.value).startswith(str(bundle / "sha256sum-amd64.txt"))
    assert caught.value.hint == "the image's k3s bundle is damaged; reflash or rebuild the image"
    (bundle / "sha256sum-amd64.txt").unlink()
    with pytest.raises(RackbootError) as caught:
        install(layout)
    assert str(caught.value) == f"{bundle / 'sha256sum-amd64.txt'}: missing (the image's k3s bundle)"
    assert caught.value.hint == "the image's k3s bundle is incomplete; rebuild it"
    assert not (layout.bin_dir / "k3s").exists()


def test_an_image_without_the_racks_config_or_a_token_is_refused(tmp_path, monkeypatch):
    layout = Layout(tmp_path / "root")
    calls = _machine(layout, tmp_path, monkeypatch)
    config = layout.k3s_config_source(RACK, Role.JUMPHOST, "jump-1")
    config.unlink()
    with pytest.raises(RackbootError) as caught:
        install(layout)
    assert str(caught.value) == f"{config}: the rack's k3s config is not in this image"
    assert caught.value.hint == "rebuild the image with the profile of rack rack-a"
    config.write_text("# jumphost config\n")
    layout.token_file.unlink()
    with pytest.raises(RackbootError) as caught:
        install(layout)
    assert str(caught.value) == f"{layout.token_file}: missing; the token step writes it"
    assert not (layout.bin_dir / "k3s").exists() and calls == []


def test_a_command_the_distribution_has_in_usr_bin_or_bin_is_not_linked(tmp_path, monkeypatch):
    """install.sh's rule, with the real system path: sh is in /bin (and
    /usr/bin) on every Debian, so a link named sh is never made."""
    layout = Layout(tmp_path / "root")
    _machine(layout, tmp_path, monkeypatch)
    monkeypatch.undo()          # the system's own path again
    monkeypatch.setattr(k3s, "LINKS", ("sh", "rackboot-test-no-such-command"))
    k3s._install_files(layout, RACK, Role.JUMPHOST, "jump-1", *k3s.find_bundle(layout, VERSION, "amd64"))
    assert not os.path.lexists(layout.bin_dir / "sh")
    assert os.readlink(layout.bin_dir / "rackboot-test-no-such-command") == "k3s"
    # Only those two directories count, not the agent's PATH (install.sh's rule).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "rackboot-test-on-path").write_text("#!/bin/sh\n")
    (elsewhere / "rackboot-test-on-path").chmod(0o755)
    monkeypatch.setenv("PATH", f"{elsewhere}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setattr(k3s, "LINKS", ("rackboot-test-on-path",))
    k3s._install_files(layout, RACK, Role.JUMPHOST, "jump-1", *k3s.find_bundle(layout, VERSION, "amd64"))
    assert os.readlink(layout.bin_dir / "rackboot-test-on-path") == "k3s"
