"""A Pi's ssh access (issue 14): the rack's admin keys reach the Pi, and a
netbooted Pi's host key is the same at every boot without being in the
shared root.

On a pretend rack the Pi's pi-access (firstboot/pi_access.py, before sshd)
writes the profile's admin keys and gets its host key from the jumphost's
join service, derived from the rack token (firstboot/host_keys.py): the same
after a power cut that emptied its /etc, another for another Pi. A real sshd
(Debian's) with the Pi root's sshd drop-in, the admin user as the image
makes it (useradd --root) and the Pi's files lets the admin in, with sudo,
and presents that key. The join service refuses a Pi that is not in the
profile, a Pi's key to another address than its own in the profile, and
everything outside the rack's subnet."""

import base64
import http.client
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from firstboot import host_keys, join, pi_access
from image import payload
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack
from tests.lib.ssh_jumphost import SSHD, SshJumphost, keygen

TOKEN = b"loop-rack-token-ssh-5e21"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
ADMIN_KEYS = "/etc/ssh/authorized_keys/rackboot"


def derived(rack_token: bytes, rack: str, node: str):
    return host_keys.private_key(host_keys.secret(rack_token, rack), node)


def public(key) -> bytes:
    return host_keys.openssh_public(key, "").split()[1]


@pytest.fixture(scope="module")
def rack(tmp_path_factory):
    """The loopback rack with two admin keys, loop-pi-02 at a fixed address,
    and its jumphost's agent run (serve and token: the join service is up)."""
    tmp = tmp_path_factory.mktemp("pi-access")
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp, REPO / "tests/profiles/loopback", "loop", sm.start())
    try:
        (tmp / "keys").mkdir()
        rack.admin_key, rack.stranger_key = tmp / "keys/admin", tmp / "keys/stranger"
        keys = [keygen(rack.admin_key), keygen(tmp / "keys/second-admin")]
        keygen(rack.stranger_key)
        rack.pinned = str(rack.network.subnet.network_address + 150)

        def change(profile):
            profile["jumphost"]["ssh_authorized_keys"] = keys
            profile["pis"][1]["address"] = rack.pinned
        rack.edit_profile(change)
        done = rack.agent()
        assert done.returncode == 0, done.stderr + rack.status_text()
        wait_for_join_service(rack)
        yield rack
    finally:
        rack.destroy()
        sm.stop()


def wait_for_join_service(rack) -> None:
    """Until the join service listens (the agent starts it without waiting)."""
    address = (str(rack.machine.address), rack.profile().netboot.join_port)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(address, timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, rack.machine.journal("rackboot-join.service")
            time.sleep(0.1)


def access(rack, pi, **env) -> subprocess.CompletedProcess:
    """What rackboot-pi-access.service runs on the Pi at boot."""
    return pi.run([sys.executable, "-m", "firstboot", "pi-access"], **{**rack.env, **env})


def key_of(pi):
    return host_keys.load_private(pi.path(HOST_KEY).read_bytes())


def assert_no_key_in(text: str, *keys) -> None:
    from cryptography.hazmat.primitives import serialization
    assert "PRIVATE KEY" not in text
    for key in keys:
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        assert seed.hex() not in text and base64.b64encode(seed).decode()[:20] not in text


@pytest.mark.machine
def test_a_pi_gets_the_admin_keys_and_the_same_host_key_at_every_boot(rack):
    pi = rack.add_pi("pi1", "0b0b0b01")
    host = socket.gethostname()
    done = access(rack, pi)
    assert done.returncode == 0, done.stderr
    # Its hostname is its node name (in its own UTS namespace: the host's is untouched).
    assert pi.run(["hostname"]).stdout == "loop-pi-01\n" and socket.gethostname() == host
    assert "hostname: loop-pi-01" in done.stderr
    assert "ssh access for loop-pi-01 of rack loop: 2 admin key(s) (changed); host key from the jumphost" in done.stderr
    keys = pi.path(ADMIN_KEYS)
    assert keys.read_text() == "".join(f"{key}\n" for key in rack.profile().jumphost.ssh_authorized_keys)
    for path, mode in ((keys, 0o644), (keys.parent, 0o755), (pi.path(HOST_KEY), 0o600),
                       (pi.path(HOST_KEY + ".pub"), 0o644)):
        info = path.stat()
        assert (info.st_uid, info.st_mode & 0o7777) == (0, mode), path
    expected = derived(TOKEN, "loop", "loop-pi-01")
    assert public(key_of(pi)) == public(expected)
    assert pi.path(HOST_KEY + ".pub").read_bytes() == host_keys.openssh_public(expected, "loop-pi-01")
    # A run on a Pi that has it all changes nothing.
    inode = pi.path(HOST_KEY).stat().st_ino
    again = access(rack, pi)
    assert again.returncode == 0 and "2 admin key(s); host key from the jumphost" in again.stderr
    assert "hostname:" not in again.stderr
    assert pi.path(HOST_KEY).stat().st_ino == inode
    # A power cut: a netbooted Pi's /etc was in RAM. Its next boot gets the same key.
    pi.power_off()
    for child in pi.path("/etc/ssh").iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    rebooted = access(rack, pi)
    assert rebooted.returncode == 0, rebooted.stderr
    assert public(key_of(pi)) == public(expected) and pi.path(ADMIN_KEYS).read_text() == keys.read_text()
    # Another Pi (at its address in the profile) gets a key of its own.
    other = rack.add_pi("pi2", "0b0b0b02")
    assert str(other.address) == rack.pinned
    assert access(rack, other).returncode == 0
    assert public(key_of(other)) == public(derived(TOKEN, "loop", "loop-pi-02")) != public(expected)
    # No key in any output: the Pis', the join service's journal.
    journal = rack.machine.journal("rackboot-join.service")
    assert "GET /v1/ssh-host-key/loop-pi-01 HTTP/1.1\" 200" in journal
    assert_no_key_in(done.stdout + done.stderr + rebooted.stderr + journal, expected, key_of(other))


def get(address: str, port: int, path: str, source: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=10,
                                            source_address=(source, 0) if source else None)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.mark.machine
def test_what_the_join_service_refuses_on_the_rack_network(rack):
    jumphost, port = str(rack.machine.address), rack.profile().netboot.join_port
    # The test host is the rack's router: an address in the subnet, and no Pi's.
    status, body = get(jumphost, port, "/v1/ssh-host-key/loop-pi-02")
    assert status == 403 and f"goes to its address in the profile ({rack.pinned}) only".encode() in body
    assert get(jumphost, port, "/v1/ssh-host-key/no-such-pi")[0] == 404
    assert get(jumphost, port, "/v1/ssh-host-key/../agent-token")[0] == 404
    # What the README says: a Pi without an address in the profile gets no such check.
    status, body = get(jumphost, port, "/v1/ssh-host-key/loop-pi-01")
    assert status == 200 and public(host_keys.load_private(body)) == public(derived(TOKEN, "loop", "loop-pi-01"))
    # A Pi in no profile: no admin keys, a fresh host key, and it says why.
    stranger = rack.add_pi("stranger", "0b0b0b77")
    done = access(rack, stranger)
    assert done.returncode == 1
    assert "is in no rack profile of this image; no admin keys on this Pi" in done.stderr
    assert "ssh host key: none from the jumphost (this Pi is in no rack profile of this image); sshd gets a " \
           "fresh key for this boot" in done.stderr
    assert not stranger.path(ADMIN_KEYS).exists() and key_of(stranger)


@pytest.mark.machine
def test_a_pi_whose_jumphost_does_not_answer_still_gets_ssh(rack):
    pi = rack.add_pi("pi1-early", "0b0b0b01")
    expected = derived(TOKEN, "loop", "loop-pi-01")
    assert rack.machine.run(["systemctl", "stop", "rackboot-join.service"]).returncode == 0
    try:
        done = access(rack, pi, RACKBOOT_HOST_KEY_TIMEOUT=0)
        assert done.returncode == 0, done.stderr
        assert "ssh host key: none from the jumphost (no answer within 0 s; last: " in done.stderr
        assert "sshd gets a fresh key for this boot, and ssh clients will see a changed host key for " \
               "loop-pi-01" in done.stderr
        fresh = key_of(pi)
        assert public(fresh) != public(expected) and pi.path(ADMIN_KEYS).exists()
        # An SD-card Pi keeps what it has until its jumphost answers.
        kept = access(rack, pi, RACKBOOT_HOST_KEY_TIMEOUT=0)
        assert "sshd keeps the key this Pi already has" in kept.stderr and public(key_of(pi)) == public(fresh)
    finally:
        # As the agent starts it (its pipes stay with the service: a blocking start would wait on them).
        assert rack.machine.run(["systemctl", "start", "--no-block", "rackboot-join.service"]).returncode == 0
    done = access(rack, pi, RACKBOOT_HOST_KEY_TIMEOUT=60)
    assert done.returncode == 0 and "host key from the jumphost" in done.stderr
    assert public(key_of(pi)) == public(expected)
    assert_no_key_in(done.stderr, expected, fresh)


# --------------------------------------------------------------- a real sshd

PAM_SSHD = """\
# The test's: Debian's pam.d/sshd would register the session with the host's
# logind. What the Pi's stack decides for a key login is pam_unix's account
# check (a locked password does not stop a key).
auth required pam_deny.so
account required pam_unix.so
session required pam_permit.so
password required pam_deny.so
"""


def base_tree(tree: Path) -> Path:
    """The files useradd --root reads and writes, as in a fresh Debian root:
    the host's system users and groups only."""
    (tree / "etc/default").mkdir(parents=True)
    (tree / "home").mkdir()
    shutil.copyfile("/etc/login.defs", tree / "etc/login.defs")
    shutil.copyfile("/etc/default/useradd", tree / "etc/default/useradd")
    shutil.copytree("/etc/skel", tree / "etc/skel")
    def system(line: str) -> bool:
        return int(line.split(":")[2]) < 1000 or int(line.split(":")[2]) == 65534
    users = {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines() if system(line)}
    groups = [line.split(":") for line in Path("/etc/group").read_text().splitlines() if system(line)]
    names = {fields[0] for fields in groups}
    files = {"passwd": [line for line in Path("/etc/passwd").read_text().splitlines() if line.split(":")[0] in users],
             "group": [":".join([*fields[:3], ",".join(m for m in fields[3].split(",") if m in users)])
                       for fields in groups],
             "shadow": [line for line in Path("/etc/shadow").read_text().splitlines() if line.split(":")[0] in users],
             "gshadow": [line for line in Path("/etc/gshadow").read_text().splitlines()
                         if line.split(":")[0] in names]}
    for name, lines in files.items():
        (tree / "etc" / name).write_text("\n".join(lines) + "\n")
        os.chmod(tree / "etc" / name, 0o640 if "shadow" in name else 0o644)
    return tree


class SshPi(SshJumphost):
    """Debian's sshd in a network namespace of its own, with the Pi root's
    users, sudoers and sshd drop-in (tree), the Pi's /etc/ssh files (pi_ssh)
    under Debian's sshd_config, and the Pi's home directories."""

    def __init__(self, tmp: Path, tree: Path, pi_ssh: Path):
        self.tree, self.pi_ssh = tree, pi_ssh
        super().__init__(tmp, "pi")
        for source, target in ((self.root / "etc-ssh", "/etc/ssh"), (self.root / "pam-sshd", "/etc/pam.d/sshd"),
                               (tree / "home", "/home")):
            self.enter("mount", "--bind", str(source), target)

    def _files(self) -> None:
        root = self.root = self.tmp / "pi-sshd"
        (root / "etc").mkdir(parents=True)
        for name in ("passwd", "group", "shadow"):
            shutil.copy2(self.tree / "etc" / name, root / "etc" / name)
        shutil.copytree(self.tree / "etc/sudoers.d", root / "etc/sudoers.d")
        for directory in ("etc/rancher", "run/sshd"):
            (root / directory).mkdir(parents=True)
        (root / "run/sshd").chmod(0o755)
        ssh = root / "etc-ssh"
        shutil.copytree(self.pi_ssh, ssh, symlinks=True)
        shutil.copyfile("/etc/ssh/sshd_config", ssh / "sshd_config")     # Debian's: it includes sshd_config.d/
        shutil.copytree(self.tree / "etc/ssh/sshd_config.d", ssh / "sshd_config.d")
        (root / "pam-sshd").write_text(PAM_SSHD)

    def start_sshd(self) -> None:
        self.sshd = self.spawn([SSHD, "-D", "-e", "-o", f"ListenAddress={self.address}", "-o", "PidFile=none"],
                               "sshd.log")
        self._wait_for(lambda: self.enter("ss", "-Htln", f"src {self.address}:22").stdout.strip(), "sshd")

    def ssh(self, key: Path, known_hosts: Path, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                               "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                               "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20",
                               f"{payload.ADMIN}@{self.address}", *command],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.machine
def test_sshd_lets_the_admin_in_with_the_pis_own_host_key(rack, tmp_path):
    tree = base_tree(tmp_path / "pi-root")
    payload.install_pi_access(tree)
    passwd = (tree / "etc/passwd").read_text()
    assert f"rackboot:x:{payload.ADMIN_UID}:{payload.ADMIN_UID}:rackboot administrator:/home/rackboot:/bin/bash\n" \
        in passwd
    assert [line.split(":")[1] for line in (tree / "etc/shadow").read_text().splitlines()
            if line.startswith("rackboot:")] == ["!"]                      # locked, as cloud-init's lock_passwd
    assert subprocess.run(["visudo", "-c", "-f", str(tree / "etc/sudoers.d/90-rackboot-admin")],
                          capture_output=True).returncode == 0
    pi = rack.add_pi("pi1-sshd", "0b0b0b01")
    assert access(rack, pi).returncode == 0
    server = SshPi(tmp_path, tree, pi.path("/etc/ssh"))
    try:
        server.start_sshd()
        expected = host_keys.openssh_public(derived(TOKEN, "loop", "loop-pi-01"), "").decode().split()[:2]
        scanned = subprocess.run(["ssh-keyscan", "-T", "20", server.address], capture_output=True, text=True,
                                 timeout=60).stdout.splitlines()
        assert [line.split()[1:] for line in scanned if not line.startswith("#")] == [expected]  # its one key
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"{server.address} {' '.join(expected)}\n")
        done = server.ssh(rack.admin_key, known_hosts, "sudo", "-n", "id", "-u")
        assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr + server.logs()
        refused = server.ssh(rack.stranger_key, known_hosts, "true")
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
        # Another host key at that address (a Pi that made a fresh one) is not accepted silently.
        known_hosts.write_text(f"{server.address} {host_keys.openssh_public(derived(TOKEN, 'loop', 'x'), '').decode()}")
        changed = server.ssh(rack.admin_key, known_hosts, "true")
        assert changed.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    finally:
        server.destroy()


# --------------------------------------------------------------- the service in process

JUMPHOST, SUBNET, PI_ADDRESS, OTHER = "127.78.0.8", "127.78.0.0/24", "127.78.0.60", "127.78.0.50"


@pytest.fixture
def service(tmp_path):
    """The join service on the loopback for a rack of two Pis, one at PI_ADDRESS."""
    with socket.socket() as probe:
        probe.bind((JUMPHOST, 0))
        port = probe.getsockname()[1]

    def start(subnet: str = SUBNET):
        rack = types.SimpleNamespace(
            rack="loop", network=types.SimpleNamespace(subnet=ipaddress.IPv4Network(subnet)),
            jumphost=types.SimpleNamespace(address=ipaddress.IPv4Address(JUMPHOST)),
            netboot=types.SimpleNamespace(join_port=port),
            pis=(types.SimpleNamespace(name="pi-a", address=None),
                 types.SimpleNamespace(name="pi-b", address=ipaddress.IPv4Address(PI_ADDRESS))))
        secret = tmp_path / "ssh-host-key-secret"
        threading.Thread(target=join.serve_forever, args=(rack, tmp_path / "agent-token"),
                         kwargs={"host_key_secret": secret}, daemon=True).start()
        for _ in range(100):
            try:
                socket.create_connection((JUMPHOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        return rack, secret
    return start


def test_the_service_hands_each_pi_its_key_and_refuses_the_rest(service, tmp_path):
    rack, secret = service()
    port = rack.netboot.join_port
    status, body = get(JUMPHOST, port, "/v1/ssh-host-key/pi-a", OTHER)
    assert status == 503 and b"no ssh host-key secret yet" in body
    token = tmp_path / "token"
    token.write_bytes(TOKEN + b"\n")
    assert host_keys.install_secret(token, "loop", secret) is True
    assert host_keys.install_secret(token, "loop", secret) is False
    assert (secret.stat().st_mode & 0o777) == 0o600 and TOKEN not in secret.read_bytes()
    status, body = get(JUMPHOST, port, "/v1/ssh-host-key/pi-a", OTHER)
    assert status == 200 and public(host_keys.load_private(body)) == public(derived(TOKEN, "loop", "pi-a"))
    status, body = get(JUMPHOST, port, "/v1/ssh-host-key/pi-b", OTHER)
    assert status == 403 and body == b"pi-b's host key goes to its address in the profile (127.78.0.60) only, " \
                                     b"not to 127.78.0.50\n"
    status, body = get(JUMPHOST, port, "/v1/ssh-host-key/pi-b", PI_ADDRESS)
    assert status == 200 and public(host_keys.load_private(body)) == public(derived(TOKEN, "loop", "pi-b"))
    for path in ("/v1/ssh-host-key/", "/v1/ssh-host-key/pi-c", "/v1/ssh-host-key/pi-a/x", "/v1/ssh-host-key/PI-A"):
        assert get(JUMPHOST, port, path, OTHER) == (404, b"no Pi of rack loop has that name\n"), path
    # The Pi's side, through the same service: a refusal is final, at once.
    with pytest.raises(pi_access.NoHostKey, match="^HTTP 403: "):      # urllib's source: 127.0.0.1
        pi_access.fetch(rack, "pi-b", timeout=60, sleep=lambda s: pytest.fail("retried a refusal"))


def test_the_service_refuses_the_host_key_outside_the_subnet(service):
    rack, _ = service("10.78.0.0/24")
    status, body = get(JUMPHOST, rack.netboot.join_port, "/v1/ssh-host-key/pi-a", OTHER)
    assert status == 403 and body == b"127.78.0.50 is not in the rack's subnet 10.78.0.0/24\n"


def test_keys_are_bound_to_the_rack_the_node_and_the_token():
    keys = {public(derived(token, rack, node)) for token in (TOKEN, b"rotated")
            for rack in ("loop", "skolo-rack4") for node in ("pi-a", "pi-b")}
    assert len(keys) == 8
    assert public(derived(TOKEN, "loop", "pi-a")) == public(derived(TOKEN, "loop", "pi-a"))
    # Fields are separated, and the host-key secret is not the agent token (each its own message).
    assert host_keys.secret(TOKEN, "ab") != host_keys.secret(TOKEN, "a\0b")
    assert host_keys.secret(TOKEN, "loop").hex().encode() not in join.agent_token(TOKEN, "loop")
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        host_keys.load_private(other)
    with pytest.raises(ValueError, match="not an unencrypted OpenSSH private key"):
        host_keys.load_private(b"<html>captive portal</html>")


def test_the_pi_roots_units_are_read_as_systemd_does(tmp_path):
    """rackboot-pi-access.service passes systemd-analyze verify; sshd waits for
    it (the drop-in), and makes no keys of its own at boot."""
    unit = tmp_path / payload.PI_ACCESS_UNIT
    unit.write_text(payload.PI_ACCESS_UNIT_TEXT)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "Before=ssh.service rackboot-firstboot.service\n" in payload.PI_ACCESS_UNIT_TEXT
    assert "ExecStart=/usr/bin/python3 -m firstboot pi-access\n" in payload.PI_ACCESS_UNIT_TEXT
    assert payload.PI_SSH_DROPIN == f"[Unit]\nWants={payload.PI_ACCESS_UNIT}\nAfter={payload.PI_ACCESS_UNIT}\n"
    settings = [line.split(None, 1) for line in payload.PI_SSHD_CONFIG.splitlines() if line and line[0] != "#"]
    assert settings == [["HostKey", HOST_KEY], ["AuthorizedKeysFile", "/etc/ssh/authorized_keys/%u"],
                        ["PermitRootLogin", "no"], ["PasswordAuthentication", "no"],
                        ["KbdInteractiveAuthentication", "no"]]
