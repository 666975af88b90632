"""A pretend jumphost reached over real ssh: Debian's sshd in a network
namespace of its own, behind a veth pair from the test host, with the image's
admin user (`rackboot`, password-less sudo as the seed's user-data gives it)
and k3s (the stand-in, or the real binary with RACKBOOT_K3S_BUNDLE) serving
its API on the namespace's 127.0.0.1:6443 and writing /etc/rancher/k3s/k3s.yaml.

The namespace's processes share a private mount namespace that binds the
jumphost's own /etc/passwd, /etc/group, /etc/shadow, /etc/sudoers.d,
/etc/rancher and /run/sshd over the host's, so the host is untouched apart
from empty mount points. The operator's side (the test) gets an ssh
configuration naming the jumphost (Host NAME, HostName ADDRESS), a key the
jumphost accepts and its host key in known_hosts, as an operator has them.
Machine tier: root, `ip netns`, `unshare`, sshd, sudo.
"""

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.doubles import k3s_standin, k3s_standin_bundle
from tests.lib import machine

ADMIN = "rackboot"
ADMIN_UID = 61234        # not a uid of the host's
API_PORT = 6443
SSHD = "/usr/sbin/sshd"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check, timeout=60)


def keygen(path: Path) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path.with_suffix(".pub").read_text().strip()


class SshJumphost:
    def __init__(self, tmp: Path, name: str):
        """name: how the operator's ssh configuration calls it (jumphost.ssh_host)."""
        self.name, self.tmp = name, tmp
        tag = f"{os.getpid() % 10000}{random.randrange(10000):04d}"
        self.netns, self.veth = f"rbjh{tag}", f"rbjh{tag}"
        third = random.randrange(256)
        fourth = random.randrange(64) * 4
        self.host_address, self.address = f"10.211.{third}.{fourth + 1}", f"10.211.{third}.{fourth + 2}"
        # The admin's home must be reachable by its uid: pytest's tmp is root's alone.
        self.home_root = Path(tempfile.mkdtemp(prefix="rackboot-jh-", dir="/tmp"))
        self.home_root.chmod(0o755)
        self.processes: list[subprocess.Popen] = []
        self.holder = None
        try:
            self._network()
            self._files()
            self._namespace()
        except BaseException:
            self.destroy()
            raise

    # ------------------------------------------------------------ set-up
    def _network(self) -> None:
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.veth + "a", "type", "veth", "peer", "name", self.veth + "b")
        _run("ip", "link", "set", self.veth + "b", "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth + "a")
        _run("ip", "link", "set", self.veth + "a", "up")
        for argv in (["ip", "addr", "add", f"{self.address}/30", "dev", self.veth + "b"],
                     ["ip", "link", "set", self.veth + "b", "up"], ["ip", "link", "set", "lo", "up"]):
            _run("ip", "netns", "exec", self.netns, *argv)

    def _files(self) -> None:
        root = self.root = self.tmp / "jumphost"
        for directory in ("etc/sudoers.d", "etc/rancher/k3s", "run/sshd", "ssh", "k3s-data", "operator"):
            (root / directory).mkdir(parents=True)
        (root / "run/sshd").chmod(0o755)
        home = self.home_root / ADMIN
        (home / ".ssh").mkdir(parents=True)
        self.operator_key = root / "operator/id_ed25519"
        self.authorize(keygen(self.operator_key))
        shutil.copyfile("/etc/passwd", root / "etc/passwd")
        shutil.copyfile("/etc/group", root / "etc/group")
        with open(root / "etc/passwd", "a") as out:
            out.write(f"{ADMIN}:x:{ADMIN_UID}:{ADMIN_UID}:rackboot administrator:{home}:/bin/bash\n")
        with open(root / "etc/group", "a") as out:
            out.write(f"{ADMIN}:x:{ADMIN_UID}:\n")
        shadow = Path("/etc/shadow").read_text() + f"{ADMIN}:*:20000:0:99999:7:::\n"   # no password, not locked
        (root / "etc/shadow").write_text(shadow)
        (root / "etc/shadow").chmod(0o640)
        sudoers = root / "etc/sudoers.d/90-cloud-init-users"      # as cloud-init writes the seed's sudo:
        sudoers.write_text(f"# User rules for {ADMIN}\n{ADMIN} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)
        for path in (home, home / ".ssh", home / ".ssh/authorized_keys"):
            os.chown(path, ADMIN_UID, ADMIN_UID)
        host_key = root / "ssh/ssh_host_ed25519_key"
        self.host_public_key = keygen(host_key)
        (root / "ssh/sshd_config").write_text(
            f"ListenAddress {self.address}\nHostKey {host_key}\nPidFile none\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin no\nStrictModes yes\nAllowTcpForwarding yes\nLogLevel VERBOSE\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n")     # as Debian's sshd_config: scp uses it
        self.ssh_config = root / "operator/ssh_config"
        known_hosts = root / "operator/known_hosts"
        known_hosts.write_text(f"{self.address} {self.host_public_key}\n")
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName {self.address}\n  IdentityFile {self.operator_key}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n")

    def _namespace(self) -> None:
        binds = {"/etc/passwd": "etc/passwd", "/etc/group": "etc/group", "/etc/shadow": "etc/shadow",
                 "/etc/sudoers.d": "etc/sudoers.d", "/etc/rancher": "etc/rancher", "/run/sshd": "run/sshd"}
        self.holder = subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
                                        "private", "sleep", "infinity"], stdin=subprocess.DEVNULL)
        ours = os.readlink("/proc/self/ns/mnt")
        for _ in range(200):
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != ours and \
                        Path(f"/proc/{self.holder.pid}/comm").read_text().strip() == "sleep":
                    break
            except OSError:
                pass
            time.sleep(0.02)
        for target, source in binds.items():
            if not os.path.exists(target):
                Path(target).mkdir(parents=True)       # an empty mount point on the host
            self.enter("mount", "--bind", str(self.root / source), target)

    def enter(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run("nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv, check=check)

    def spawn(self, argv: list[str], log: str, **env) -> subprocess.Popen:
        out = open(self.root / log, "w")
        process = subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env})
        self.processes.append(process)
        return process

    # ------------------------------------------------------------ what runs there
    def authorize(self, public_key: str) -> None:
        keys = self.home_root / ADMIN / ".ssh/authorized_keys"
        with open(keys, "a") as out:
            out.write(public_key + "\n")
        keys.chmod(0o600)

    def start_sshd(self) -> None:
        self.sshd = self.spawn([SSHD, "-D", "-e", "-f", str(self.root / "ssh/sshd_config")], "sshd.log")
        self._wait_for(lambda: self.enter("ss", "-Htln", f"src {self.address}:22").stdout.strip(), "sshd")

    def stop_sshd(self) -> None:
        self.sshd.terminate()
        self.sshd.wait()

    def start_k3s(self) -> None:
        real = k3s_standin_bundle.real_bundle()
        binary = real / "k3s" if real else self.root / "k3s"
        if not real:
            binary.write_bytes(k3s_standin_bundle.standin_binary(k3s_standin.VERSION))
            binary.chmod(0o755)
        self.k3s = self.spawn([str(binary), "server", f"--https-listen-port={API_PORT}", f"--node-name={self.name}",
                               f"--node-ip={self.address}", "--token=attach-test-token",
                               f"--data-dir={self.root / 'k3s-data'}"], "k3s.log")
        self._wait_for(lambda: (self.root / "etc/rancher/k3s/k3s.yaml").exists() and
                       self.enter("ss", "-Htln", f"sport = :{API_PORT}").stdout.strip(), "k3s")

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            if any(p.poll() is not None for p in self.processes):
                raise AssertionError(f"{what} exited:\n" + self.logs())
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start:\n" + self.logs())
            time.sleep(0.05)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in sorted(self.root.glob("*.log")))

    def connections_from_operator(self) -> list[str]:
        """Established TCP connections to the jumphost's sshd from the test host."""
        return self.enter("ss", "-Htn", "state", "established", f"src {self.address}:22").stdout.splitlines()

    # ------------------------------------------------------------ tear-down
    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        if self.holder is not None:       # sshd's per-connection processes too
            namespace = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            for pid in machine._processes_in(namespace):
                if pid != self.holder.pid:
                    machine._kill([pid])
            self.holder.kill()
            self.holder.wait()
        _run("ip", "link", "del", self.veth + "a", check=False)
        _run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.home_root, ignore_errors=True)
