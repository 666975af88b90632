"""build.py router: a rack's names moved between the legacy jumphost and
rackboot's, on the rack router, either way.

The router is a pretend one reached over real ssh (tests/lib/ssh_jumphost.py:
Debian's sshd and sudo in a network namespace), running a real dnsmasq that
reads the hosts file build.py changes (as --addn-hosts: dnsmasq reads it and
/etc/hosts alike, and again on SIGHUP). Each test asks dnsmasq over DNS what
the names resolve to, so "delivered" means a device on the rack gets the
address, not only that a file changed. EdgeOS cannot run here: its commands
are checked as rendered, strictly, and sent over the same ssh to a stand-in
for its vyatta-cfg-cmd-wrapper (tests/doubles/vyatta_cfg_wrapper.py)."""

import dataclasses
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from firstboot.errors import BadInput
from firstboot.profile import load_profiles
from image import hosts_block, router
from tests.lib.machine import REPO
from tests.lib.ssh_jumphost import ADMIN_UID, SshJumphost, keygen

DEFAULTS = """\
network: {subnet: 10.1.0.0/24, router: 10.1.0.1}
jumphost: {hostname: jh, address: 10.1.0.8}
k3s: {version: v1.31.4+k3s1, token: "sm://rackboot-test/k3s-token"}
"""
PROFILE = "rack: r1\nhost_aliases: [metadata, prometheus]\nmanifests: [kube]\nmigration: {legacy_address: 10.1.0.9}\n"
# What was on the router before rackboot: the legacy jumphost by name, and
# lines of others' with tabs, comments and no newline at the very end.
ROUTER_HOSTS = ("127.0.0.1\tlocalhost\n::1     localhost ip6-localhost\n# the rack's machines\n"
                "10.1.0.9 legacy-jh\t# the original team's jumphost\n10.1.0.30 switch-1")
CUTOVER = ["10.1.0.8 jh metadata prometheus"]
ROLLBACK = ["10.1.0.8 jh", "10.1.0.9 metadata prometheus"]


def write_profiles(directory: Path, profile: str = PROFILE) -> Path:
    """A rack whose aliases have an Ingress behind them (check refuses an alias nothing answers)."""
    directory.mkdir(exist_ok=True)
    (directory / "defaults.yaml").write_text(DEFAULTS)
    kube = directory / "kube"
    kube.mkdir(exist_ok=True)
    rules = [{"host": alias, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": "web", "port": {"number": 80}}}}]}} for alias in ("metadata", "prometheus")]
    (kube / "web.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"rules": rules}}]))
    (directory / "r1.yaml").write_text(profile)
    return directory / "r1.yaml"


def resolve(server: str, name: str) -> list[str]:
    """The A records dnsmasq at server answers for name (one UDP query, RFC 1035)."""
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(query, (server, 53))
        answer = sock.recv(4096)
    count = struct.unpack(">H", answer[6:8])[0]
    at, addresses = len(query), []
    for _ in range(count):
        at += 2 if answer[at] & 0xC0 else answer.index(b"\0", at) + 1 - at   # a pointer or a name
        kind, _, _, length = struct.unpack(">HHIH", answer[at:at + 10])
        at += 10
        if kind == 1:
            addresses.append(str(ipaddress.IPv4Address(answer[at:at + length])))
        at += length
    return sorted(addresses)


class PretendRouter:
    """sshd and dnsmasq in a namespace of their own, with its hosts file."""

    def __init__(self, tmp: Path, sshd: bool = True):
        self.host = SshJumphost(tmp, "rtr")
        self.etc = self.host.root / "router-etc"
        self.etc.mkdir()
        self.hosts = self.etc / "hosts"
        self.hosts.write_text(ROUTER_HOSTS)
        self.hosts.chmod(0o640)
        self.pidfile = self.host.root / "dnsmasq.pid"
        if sshd:
            self.host.start_sshd()
        self.dnsmasq = self.host.spawn(
            ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             f"--addn-hosts={self.hosts}", f"--listen-address={self.host.address}", "--bind-interfaces",
             f"--pid-file={self.pidfile}", "--user=root", "--log-queries", "--log-facility=-"], "dnsmasq.log")
        deadline = time.monotonic() + 60
        while not (self.pidfile.exists() and self.pidfile.read_text().strip()):
            assert self.dnsmasq.poll() is None and time.monotonic() < deadline, self.host.logs()
            time.sleep(0.05)

    def install_edgeos(self) -> Path:
        """The vyatta-cfg-cmd-wrapper stand-in at /opt/vyatta/sbin on the router
        (a bind mount in its namespace only); its state directory, the admin's."""
        opt = self.host.root / "opt"
        (opt / "vyatta/sbin").mkdir(parents=True)
        state = opt / "vyatta/state"
        state.mkdir()
        os.chown(state, ADMIN_UID, ADMIN_UID)
        wrapper = opt / "vyatta/sbin/vyatta-cfg-cmd-wrapper"
        shutil.copyfile(REPO / "tests/doubles/vyatta_cfg_wrapper.py", wrapper)
        for path in (opt, opt / "vyatta", opt / "vyatta/sbin", wrapper):
            path.chmod(0o755)
        self.host.enter("mount", "--bind", str(opt), "/opt")
        return state

    def names(self, *names: str) -> dict[str, list[str]]:
        return {name: resolve(self.host.address, name) for name in names}

    def build(self, profile: Path, *options: str, ssh_config: Path | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(REPO / "build.py"), "router", str(profile), "--to", self.host.name,
                "--user", "rackboot", "--ssh-config", str(ssh_config or self.host.ssh_config),
                "--hosts-file", str(self.hosts), "--dnsmasq-pidfile", str(self.pidfile), *options]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def block(self) -> list[str]:
        lines = self.hosts.read_text().splitlines()
        begin, end = lines.index("# BEGIN rackboot rack r1"), lines.index("# END rackboot rack r1")
        return [line for line in lines[begin + 1:end] if not line.startswith("#")]

    def others(self) -> str:
        """The file without rackboot's block: what must never change."""
        lines = self.hosts.read_text().splitlines(keepends=True)
        if "# BEGIN rackboot rack r1\n" not in lines:
            return "".join(lines)
        begin, end = lines.index("# BEGIN rackboot rack r1\n"), lines.index("# END rackboot rack r1\n")
        return "".join(lines[:begin] + lines[end + 1:])


@pytest.fixture
def pretend_router(tmp_path):
    made = []

    def make(sshd: bool = True) -> PretendRouter:
        made.append(PretendRouter(tmp_path / f"router{len(made)}", sshd))
        return made[-1]
    yield make
    for each in made:
        each.host.destroy()


@pytest.fixture
def profile(tmp_path) -> Path:
    return write_profiles(tmp_path / "rack-profiles")


# ------------------------------------------------------------------ both ways, for real


@pytest.mark.machine   # a real sshd and dnsmasq in a network namespace
def test_cutover_then_rollback_moves_the_names_and_keeps_every_other_line(pretend_router, profile):
    rtr = pretend_router()
    before = rtr.names("metadata", "legacy-jh", "switch-1")
    assert before == {"metadata": [], "legacy-jh": ["10.1.0.9"], "switch-1": ["10.1.0.30"]}
    inode, owner = rtr.hosts.stat().st_ino, (rtr.hosts.stat().st_uid, rtr.hosts.stat().st_gid)

    cut = rtr.build(profile, "--cutover")
    assert cut.returncode == 0, cut.stderr + rtr.host.logs()
    assert "+10.1.0.8 jh metadata prometheus" in cut.stdout           # the change is shown as it is made
    assert rtr.block() == CUTOVER
    # every other line byte for byte; the last one got the newline the block needs after it
    assert rtr.others() == ROUTER_HOSTS + "\n"
    assert rtr.names("metadata", "prometheus", "jh", "legacy-jh") == {
        "metadata": ["10.1.0.8"], "prometheus": ["10.1.0.8"], "jh": ["10.1.0.8"], "legacy-jh": ["10.1.0.9"]}
    stat = rtr.hosts.stat()
    assert stat.st_ino != inode                                        # renamed over, not rewritten in place
    assert (stat.st_mode & 0o777, (stat.st_uid, stat.st_gid)) == (0o640, owner)   # its owner and mode kept
    assert sorted(p.name for p in rtr.etc.iterdir()) == ["hosts"]       # nothing staged left behind
    assert "Accepted publickey for rackboot" in rtr.host.logs()

    back = rtr.build(profile, "--rollback")
    assert back.returncode == 0, back.stderr
    assert rtr.block() == ROLLBACK
    assert rtr.others() == ROUTER_HOSTS + "\n"
    assert rtr.names("metadata", "prometheus", "jh") == {
        "metadata": ["10.1.0.9"], "prometheus": ["10.1.0.9"], "jh": ["10.1.0.8"]}
    assert rtr.hosts.read_text().count("# BEGIN rackboot rack r1") == 1   # replaced, not added again

    again = rtr.build(profile, "--rollback")
    assert again.returncode == 0 and "already as --rollback makes it: no change" in again.stdout
    assert rtr.build(profile, "--cutover").returncode == 0
    assert rtr.names("metadata") == {"metadata": ["10.1.0.8"]} and rtr.block() == CUTOVER


@pytest.mark.machine   # a real sshd and dnsmasq in a network namespace
def test_dry_run_shows_the_diff_and_changes_nothing(pretend_router, profile):
    rtr = pretend_router()
    before, inode = rtr.hosts.read_bytes(), rtr.hosts.stat().st_ino
    result = rtr.build(profile, "--cutover", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"--- rtr:{rtr.hosts} (now)" and lines[1] == f"+++ rtr:{rtr.hosts} (after)"
    added = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
    assert added == ["# BEGIN rackboot rack r1", hosts_block.NOTICE, *CUTOVER, "# END rackboot rack r1"]
    assert (rtr.hosts.read_bytes(), rtr.hosts.stat().st_ino) == (before, inode)
    assert rtr.names("metadata") == {"metadata": []}


# ------------------------------------------------------------------ failures: named, the file unchanged


def assert_unchanged(rtr: PretendRouter, before: bytes) -> None:
    assert rtr.hosts.read_bytes() == before
    assert sorted(p.name for p in rtr.etc.iterdir()) == ["hosts"]


@pytest.mark.machine   # a real sshd in a network namespace
def test_an_unreachable_router(pretend_router, profile):
    rtr = pretend_router(sshd=False)
    result = rtr.build(profile, "--cutover")
    assert result.returncode == 1
    assert "error: router rtr: reading " in result.stderr and "rtr refuses ssh connections" in result.stderr
    assert "hint: is the router up and its ssh service on" in result.stderr
    assert_unchanged(rtr, ROUTER_HOSTS.encode())


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_key_the_router_refuses(pretend_router, profile, tmp_path):
    rtr = pretend_router()
    keygen(tmp_path / "stranger")
    config = tmp_path / "stranger_config"
    config.write_text(rtr.host.ssh_config.read_text().replace(str(rtr.host.operator_key), str(tmp_path / "stranger")))
    result = rtr.build(profile, "--cutover", ssh_config=config)
    assert result.returncode == 1
    assert "rackboot@rtr refused the login" in result.stderr
    assert "hint: the router must accept your key for rackboot" in result.stderr
    assert_unchanged(rtr, ROUTER_HOSTS.encode())


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_hosts_file_that_cannot_be_written(pretend_router, profile):
    rtr = pretend_router()
    rtr.host.enter("mount", "-o", "bind,ro", str(rtr.etc), str(rtr.etc))    # read-only, on the router only
    result = rtr.build(profile, "--cutover")
    assert result.returncode == 1
    assert f"error: router rtr: copying {rtr.hosts} to {rtr.etc}/.hosts.rackboot-new" in result.stderr
    assert "Read-only file system" in result.stderr and f"so {rtr.etc} must be writable by root" in result.stderr
    assert_unchanged(rtr, ROUTER_HOSTS.encode())
    assert rtr.names("metadata") == {"metadata": []}


@pytest.mark.machine   # a real sshd in a network namespace
@pytest.mark.parametrize("damage, expected", [
    ("# BEGIN rackboot rack r1\n10.1.0.8 jh metadata\n", ":6: rackboot's block for rack r1 begins here but never ends"),
    ("# BEGIN rackboot rack r1\n10.1.0.8 jh\n#END rackboot rack r1\n", ":8: a damaged marker of rackboot's block"),
    ("# END rackboot rack r1\n# BEGIN rackboot rack r1\n", ":6: rackboot's block for rack r1 ends here but does not"),
    ("10.1.0.9 legacy-jh2 METADATA\n", ":6: 'METADATA' is also mapped here, outside rackboot's block"),
])
def test_a_damaged_block_or_a_name_mapped_elsewhere_stops_the_change(pretend_router, profile, damage, expected):
    rtr = pretend_router()
    rtr.hosts.write_text(ROUTER_HOSTS + "\n" + damage)
    before = rtr.hosts.read_bytes()
    result = rtr.build(profile, "--cutover")
    assert result.returncode == 1
    assert f"error: rtr:{rtr.hosts}{expected}" in result.stderr, result.stderr
    assert_unchanged(rtr, before)


@pytest.mark.machine   # a real sshd in a network namespace
def test_no_dnsmasq_behind_the_pid_file(pretend_router, profile):
    rtr = pretend_router()
    rtr.pidfile.write_text(f"{rtr.host.sshd.pid}\n")           # a running process, but not dnsmasq
    result = rtr.build(profile, "--cutover")
    assert result.returncode == 1
    assert f"no process named dnsmasq has the pid in {rtr.pidfile}" in result.stderr
    assert "hint: is dnsmasq the router's DNS server" in result.stderr
    assert_unchanged(rtr, ROUTER_HOSTS.encode())


# ------------------------------------------------------------------ bad input: exit 2 before any ssh


def test_bad_input_is_refused_before_any_ssh(build, tmp_path):
    profile = write_profiles(tmp_path / "p")
    no_legacy = write_profiles(tmp_path / "q", PROFILE.replace("migration: {legacy_address: 10.1.0.9}\n", ""))
    ok = ["--to", "nowhere.invalid"]
    cases = [
        ([str(profile), *ok], "say which way: --cutover"),
        ([str(profile), *ok, "--cutover", "--rollback"], "say which way: --cutover"),
        ([str(no_legacy), *ok, "--rollback"], "rack r1 has no migration.legacy_address"),
        ([str(profile), "--to=-oProxyCommand=touch /tmp/x", "--cutover"], "--to '-oProxyCommand=touch /tmp/x'"),
        ([str(profile), "--to=rtr x", "--cutover"], "--to 'rtr x' is not a host name"),
        ([str(profile), *ok, "--cutover", "--hosts-file", "etc/hosts"], "--hosts-file 'etc/hosts' is not"),
        ([str(profile), *ok, "--cutover", "--hosts-file", "/etc/../hosts"], "--hosts-file '/etc/../hosts' is not"),
        ([str(profile), *ok, "--cutover", "--user", "root;id"], "--user 'root;id' is not a user name"),
        ([str(profile), *ok, "--cutover", "--ssh-config", str(tmp_path / "none")], "no such file (--ssh-config)"),
    ]
    for argv, expected in cases:
        result = build("router", *argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, (argv, result.stderr)
    hint = build("router", str(no_legacy), *ok, "--rollback").stderr
    assert "sudo systemctl start metadata" in hint                     # the other way back, named


# ------------------------------------------------------------------ the block and the EdgeOS commands


def test_the_block_replaces_only_itself():
    crlf = "127.0.0.1 localhost\r\n# BEGIN rackboot rack r1\n1.2.3.4 old\n# END rackboot rack r1\nlast line"
    new = hosts_block.replaced(crlf, "r1", ["10.1.0.8 jh"], "f")
    assert new == ("127.0.0.1 localhost\r\n# BEGIN rackboot rack r1\n" + hosts_block.NOTICE + "\n10.1.0.8 jh\n"
                   "# END rackboot rack r1\nlast line")
    assert hosts_block.replaced(new, "r1", ["10.1.0.8 jh"], "f") == new
    other_rack = "# BEGIN rackboot rack r10\n10.9.0.1 x\n# END rackboot rack r10\n"   # another rack's block
    assert hosts_block.replaced(other_rack, "r1", ["10.1.0.8 jh"], "f").startswith(other_rack)
    assert hosts_block.replaced("", "r1", ["a b"], "f").splitlines()[2] == "a b"


@pytest.mark.parametrize("text, expected", [
    ("# BEGIN rackboot rack r1\n# BEGIN rackboot rack r1\n# END rackboot rack r1\n", "f:2: rackboot's block for "
                                                                                     "rack r1 is marked more than once"),
    ("# begin RACKBOOT rack r1\n", "f:1: a damaged marker"),
    ("# BEGIN rackboot rack r1 \n# END rackboot rack r1\n", "f:1: a damaged marker"),
    ("1.2.3.4 jh\n", "f:1: 'jh' is also mapped here"),
])
def test_the_block_is_found_strictly(text, expected):
    with pytest.raises(hosts_block.DamagedHostsFile) as caught:
        hosts_block.replaced(text, "r1", ["10.1.0.8 jh"], "f")
    assert str(caught.value).startswith(expected) and caught.value.exit_status == 1


def test_the_rendered_block_each_way(tmp_path):
    [rack] = load_profiles([write_profiles(tmp_path / "p")])
    assert router.block_lines(rack, router.Direction.CUTOVER) == CUTOVER
    assert router.block_lines(rack, router.Direction.ROLLBACK) == ROLLBACK
    assert rack.migration.legacy_address == ipaddress.IPv4Address("10.1.0.9")


def test_edgeos_commands_each_way(tmp_path):
    [rack] = load_profiles([write_profiles(tmp_path / "p")])
    mapping = ["set", "system", "static-host-mapping", "host-name"]
    assert router.edgeos_commands(rack, router.Direction.CUTOVER) == [
        [*mapping, "jh", "inet", "10.1.0.8"], [*mapping, "metadata", "inet", "10.1.0.8"],
        [*mapping, "prometheus", "inet", "10.1.0.8"]]
    assert router.edgeos_commands(rack, router.Direction.ROLLBACK) == [
        [*mapping, "jh", "inet", "10.1.0.8"], [*mapping, "metadata", "inet", "10.1.0.9"],
        [*mapping, "prometheus", "inet", "10.1.0.9"]]


@pytest.mark.parametrize("change", [
    {"host_aliases": ("metadata", "x; reboot")}, {"host_aliases": ("-x",)}, {"host_aliases": ("a b",)},
    {"host_aliases": ("Metadata.",)}, {"host_aliases": ("metadata\n",)},
])
def test_edgeos_commands_refuse_what_is_not_a_dns_label(tmp_path, change):
    """Whatever built the model: the words sent to the router are checked again."""
    [rack] = load_profiles([write_profiles(tmp_path / "p")])
    with pytest.raises(BadInput, match="is not a DNS label: refused as a router's host name"):
        router.edgeos_commands(dataclasses.replace(rack, **change), router.Direction.CUTOVER)
    bad_jumphost = dataclasses.replace(rack, jumphost=dataclasses.replace(rack.jumphost, hostname="jh$(id)"))
    with pytest.raises(BadInput, match=r"jumphost.hostname: 'jh\$\(id\)' is not a DNS label"):
        router.edgeos_commands(bad_jumphost, router.Direction.ROLLBACK)
    with pytest.raises(BadInput, match="jumphost.address: '10.1.0.8; id' is not an IPv4 address"):
        router.edgeos_commands(dataclasses.replace(rack, jumphost=dataclasses.replace(
            rack.jumphost, address="10.1.0.8; id")), router.Direction.CUTOVER)


def test_edgeos_dry_run_prints_the_commands_and_connects_nowhere(build, tmp_path):
    profile = write_profiles(tmp_path / "p")
    result = build("router", str(profile), "--to", "nowhere.invalid", "--rollback", "--edgeos", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["set system static-host-mapping host-name jh inet 10.1.0.8",
                                          "set system static-host-mapping host-name metadata inet 10.1.0.9",
                                          "set system static-host-mapping host-name prometheus inet 10.1.0.9"]


def wrapper_calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls").read_text().splitlines()]


@pytest.mark.machine   # a real sshd in a network namespace; EdgeOS's configuration commands stood in for
def test_edgeos_static_host_mapping_both_ways(pretend_router, profile):
    rtr = pretend_router()
    state = rtr.install_edgeos()
    cut = rtr.build(profile, "--cutover", "--edgeos")
    assert cut.returncode == 0, cut.stderr
    calls = wrapper_calls(state)
    [session] = {call[0] for call in calls}                     # one configuration session for every command
    assert session.startswith("rackboot-")
    assert [call[1:] for call in calls] == [["begin"], *router.edgeos_commands(load_profiles([profile])[0],
                                                                                router.Direction.CUTOVER),
                                            ["commit"], ["save"], ["end"]]
    active = json.loads((state / "active.json").read_text())
    assert {name: entry["inet"] for name, entry in active.items()} == {
        "jh": "10.1.0.8", "metadata": "10.1.0.8", "prometheus": "10.1.0.8"}
    assert json.loads((state / "config.boot.json").read_text()) == active          # saved: survives a reboot
    assert "10.1.0.8\t metadata  \t #vyatta entry" in (state / "hosts").read_text()
    assert not list(state.glob("session-*"))

    back = rtr.build(profile, "--rollback", "--edgeos")
    assert back.returncode == 0, back.stderr
    active = json.loads((state / "active.json").read_text())
    assert {name: entry["inet"] for name, entry in active.items()} == {
        "jh": "10.1.0.8", "metadata": "10.1.0.9", "prometheus": "10.1.0.9"}
    again = rtr.build(profile, "--rollback", "--edgeos")          # nothing to commit: not a failure
    assert again.returncode == 0 and "already as --rollback makes it: no change" in again.stdout, again.stderr
    assert not list(state.glob("session-*"))
    assert rtr.hosts.read_text() == ROUTER_HOSTS                  # the hosts-file way was not used


@pytest.mark.machine   # a real sshd in a network namespace; EdgeOS's configuration commands stood in for
def test_edgeos_a_failed_commit_is_discarded(pretend_router, profile):
    rtr = pretend_router()
    state = rtr.install_edgeos()
    (state / "commit-fails").touch()
    result = rtr.build(profile, "--cutover", "--edgeos")
    assert result.returncode == 1
    assert "error: router rtr: vyatta-cfg-cmd-wrapper commit failed (exit status 1)" in result.stderr
    assert "Commit failed" in result.stderr
    assert [call[1] for call in wrapper_calls(state)][-3:] == ["commit", "discard", "end"]
    assert not (state / "active.json").exists() and not list(state.glob("session-*"))
