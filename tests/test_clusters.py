"""build.py clusters: the original team's clusters.json (skia-buildbot
kube/clusters/config.json) from the profiles, through the real command line.
Its format, that adding a rack changes no other rack's entry, and that every
bad value, conflict or destination is refused (exit 2) with the file as it was.
The profile keys it reads, jumphost.ssh_host and k3s.attach_port, are
checked here too."""

import json
import os
from pathlib import Path

import pytest

from tests.lib.machine import REPO

DEFAULTS = (REPO / "rack-profiles" / "defaults.yaml").read_text()


def rack(directory: Path, name: str, port: int | None = None, ssh_host: str | None = None, extra: str = "") -> Path:
    jumphost = f"jumphost: {{hostname: {name}-jh" + (f", ssh_host: {json.dumps(ssh_host)}" if ssh_host else "") + "}"
    k3s = f"k3s: {{attach_port: {port}}}\n" if port is not None else ""
    path = directory / f"{name}.yaml"
    path.write_text(f"rack: {name}\n{jumphost}\n{k3s}{extra}")
    return path


@pytest.fixture
def profiles(tmp_path) -> Path:
    directory = tmp_path / "rack-profiles"
    directory.mkdir()
    (directory / "defaults.yaml").write_text(DEFAULTS)
    rack(directory, "rack-a", 7001, "rack-a.lab.example")
    rack(directory, "rack-b", 7002)
    return directory


def clusters(build, profiles: Path, out: Path):
    return build("clusters", str(profiles), "-o", str(out))


def test_format_is_the_original_teams(build, profiles, tmp_path):
    out = tmp_path / "clusters.json"
    result = clusters(build, profiles, out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == {"clusters": {
        "rack-a": {"type": "k3s", "context_name": "rack-a", "jumphost": "rack-a.lab.example", "port": "7001"},
        "rack-b": {"type": "k3s", "context_name": "rack-b", "jumphost": "rack-b-jh", "port": "7002"}}}
    text = out.read_text()
    assert text.endswith("}\n") and '"port": "7001"' in text          # the port is a string
    assert list(json.loads(text)["clusters"]["rack-a"]) == ["type", "context_name", "jumphost", "port"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o644 & ~current_umask())
    to_stdout = build("clusters", str(profiles), "-o", "-")
    assert to_stdout.returncode == 0 and to_stdout.stdout == text


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_skolo_rack4_is_written_as_the_original_team_had_it(build, tmp_path):
    """Their config.json's k3s entry, as it was before they removed k3s (99922d5a94^)."""
    result = build("clusters", "rack-profiles", "-o", "-")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["clusters"]["skolo-rack4"] == {
        "type": "k3s", "context_name": "skolo-rack4", "jumphost": "rack4", "port": "6442"}


def test_adding_a_rack_changes_no_other_racks_entry(build, profiles, tmp_path):
    out = tmp_path / "clusters.json"
    assert clusters(build, profiles, out).returncode == 0
    before = json.loads(out.read_text())["clusters"]
    rack(profiles, "rack-0", 7000)        # sorts first: order in the directory does not matter
    rack(profiles, "rack-c", 7003)
    result = clusters(build, profiles, out)
    assert result.returncode == 0, result.stderr
    after = json.loads(out.read_text())["clusters"]
    assert {name: after[name] for name in before} == before
    assert sorted(after) == ["rack-0", "rack-a", "rack-b", "rack-c"]
    # The same entries whichever racks are given: a rack's entry is its own profile's.
    alone = build("clusters", str(profiles / "rack-b.yaml"), "-o", "-")
    assert json.loads(alone.stdout)["clusters"]["rack-b"] == before["rack-b"]


def assert_refused(result, out: Path, before: bytes | None, *lines: str):
    assert result.returncode == 2, result.stderr
    for line in lines:
        assert line in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (out.read_bytes() if out.exists() else None) == before


def test_two_racks_with_one_port_are_refused(build, profiles, tmp_path):
    out = tmp_path / "clusters.json"
    assert clusters(build, profiles, out).returncode == 0
    before = out.read_bytes()
    new = rack(profiles, "rack-c", 7002)
    result = clusters(build, profiles, out)
    assert_refused(result, out, before, f"{new}: k3s.attach_port: attach port '7002' is also in "
                                        f"{profiles / 'rack-b.yaml'} (k3s.attach_port)")
    assert build("check", str(profiles)).returncode == 2      # check refuses it too


def test_two_racks_with_one_ssh_host_are_refused(build, profiles, tmp_path):
    """Two racks behind one jumphost name: attaching to one would reach the other's cluster."""
    new = rack(profiles, "rack-c", 7003, "RACK-A.lab.example")
    result = clusters(build, profiles, tmp_path / "clusters.json")
    assert_refused(result, tmp_path / "clusters.json", None,
                   f"{new}: jumphost.ssh_host: jumphost ssh host 'rack-a.lab.example' is also in "
                   f"{profiles / 'rack-a.yaml'} (jumphost.ssh_host)")


def test_one_port_in_defaults_is_refused_for_every_other_rack(build, profiles, tmp_path):
    (profiles / "defaults.yaml").write_text(DEFAULTS.replace("k3s:\n", "k3s:\n  attach_port: 7100\n", 1))
    rack(profiles, "rack-c")
    rack(profiles, "rack-d")
    result = clusters(build, profiles, tmp_path / "clusters.json")
    assert_refused(result, tmp_path / "clusters.json", None, "attach port '7100' is also in")


def test_a_rack_without_a_port_is_refused_with_a_free_one_suggested(build, profiles, tmp_path):
    new = rack(profiles, "rack-c")
    (profiles / "rack-d.yaml").write_text("rack: rack-d\njumphost: {hostname: d}\nk3s: {attach_port: 6444}\n")
    result = clusters(build, profiles, tmp_path / "clusters.json")
    assert_refused(result, tmp_path / "clusters.json", None,
                   f"{new}: k3s.attach_port: is needed to attach to rack rack-c: a port of the operator's machine "
                   "no other rack uses, such as 6445")
    assert build("check", str(profiles)).returncode == 0      # a rack nobody attaches to needs none


@pytest.mark.parametrize("value, message", [
    ("-oProxyCommand=touch /tmp/x", "jumphost.ssh_host: '-oProxyCommand=touch /tmp/x' is not a host name"),
    ("rack_a", "is not a host name"),
    ("rack..a", "is not a host name"),
    ("rack-a.", "is not a host name"),
    ("-rack", "is not a host name"),
    ("rack-", "is not a host name"),
    ("a" * 64, "is not a host name"),
    (".".join(["a" * 63] * 4), "is not a host name"),        # 255 characters
    ("rack a", "is not a host name"),
    ("rackboot@rack4", "is not a host name"),
    ("rack4\n", "is not a host name"),
    ("999.1.1.1", "jumphost.ssh_host: '999.1.1.1' looks like an IPv4 address but is not one"),
    ("1.2.3", "looks like an IPv4 address but is not one"),
    ("", "is not a host name"),
])
def test_bad_ssh_hosts_are_refused(build, profiles, tmp_path, value, message):
    new = rack(profiles, "rack-c", 7003, value or None)
    if not value:
        new.write_text(new.read_text().replace("{hostname: rack-c-jh}", '{hostname: rack-c-jh, ssh_host: ""}'))
    result = clusters(build, profiles, tmp_path / "clusters.json")
    assert_refused(result, tmp_path / "clusters.json", None, f"{new}: ", message)


@pytest.mark.parametrize("value, message", [
    ("22", "k3s.attach_port: 22 is less than the minimum of 1024"),
    ("1023", "is less than the minimum of 1024"),
    ("65536", "is greater than the maximum of 65535"),
    ('"7003"', "k3s.attach_port: "),
    ("true", "k3s.attach_port: "),
    ("7003.0", "k3s.attach_port: "),
    ("-7003", "k3s.attach_port: "),
])
def test_bad_ports_are_refused(build, profiles, tmp_path, value, message):
    new = profiles / "rack-c.yaml"
    new.write_text(f"rack: rack-c\njumphost: {{hostname: c}}\nk3s: {{attach_port: {value}}}\n")
    result = clusters(build, profiles, tmp_path / "clusters.json")
    assert_refused(result, tmp_path / "clusters.json", None, f"{new}: ", message)


def test_ssh_host_defaults_to_the_hostname_and_takes_an_address(build, profiles, tmp_path):
    rack(profiles, "rack-c", 7003, "192.168.7.8")
    result = build("clusters", str(profiles), "-o", "-")
    entries = json.loads(result.stdout)["clusters"]
    assert entries["rack-b"]["jumphost"] == "rack-b-jh" and entries["rack-c"]["jumphost"] == "192.168.7.8"


@pytest.mark.parametrize("existing, message", [
    ('{"gitdir": "/tmp", "repo": "https://skia.googlesource.com/k8s-config", "clusters": {}}',
     "holds the key 'gitdir', the key 'repo'"),
    ('{"clusters": {"skia-public": {"type": "gke", "zone": "us-central1-a"}}}',
     "holds cluster 'skia-public' of another type"),
    ("rack: rack-a\n", "holds not JSON"),
    ("[]", "holds not a JSON object"),
    ("\xff\xfe", "holds not JSON"),
])
def test_a_file_rackboot_did_not_write_is_not_replaced(build, profiles, tmp_path, existing, message):
    out = tmp_path / "config.json"
    out.write_text(existing, errors="surrogateescape")
    before = out.read_bytes()
    result = clusters(build, profiles, out)
    assert_refused(result, out, before, f"error: {out}: {message}; clusters replaces the whole file")


def test_destinations_that_are_not_files_are_refused(build, profiles, tmp_path):
    directory = tmp_path / "dir"
    directory.mkdir()
    assert_refused(clusters(build, profiles, directory), tmp_path / "none", None, "a directory or special file")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")
    assert_refused(clusters(build, profiles, link), tmp_path / "target.json", None, f"{link}: a symlink")
    assert not link.exists()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_refused(clusters(build, profiles, fifo), tmp_path / "none", None, "a directory or special file")
    missing = tmp_path / "no-such-dir" / "clusters.json"
    assert_refused(clusters(build, profiles, missing), missing, None, "its directory")
    assert not missing.parent.exists()


def test_its_own_file_is_replaced_and_a_dropped_rack_named(build, profiles, tmp_path):
    out = tmp_path / "clusters.json"
    assert clusters(build, profiles, out).returncode == 0
    (profiles / "rack-b.yaml").unlink()
    result = build("clusters", str(profiles), "-o", str(out), "-v")
    assert result.returncode == 0, result.stderr
    assert f"{out}: rack rack-b is no longer listed" in result.stderr
    assert sorted(json.loads(out.read_text())["clusters"]) == ["rack-a"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no staging file left
