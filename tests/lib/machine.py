"""A pretend machine for running the first-boot agent on the test host.

The agent keeps its real paths (/etc/rancher, /var/lib/rancher,
/usr/local/bin, /etc/systemd/system, ...). A private mount namespace
(`unshare --mount`) binds a per-test directory over each of them (BINDS,
which also has what a real k3s keeps outside /var/lib/rancher: /run/k3s,
the kubelet's, CNI's and flannel's state, the pods' logs) and a file over
/proc/cmdline, so the agent, the k3s it installs and the services it starts
see a machine of their own, and the host is untouched apart from empty
mount points. systemctl is the stand-in in tests/doubles/bin (as strict as
systemd: units as loaded until daemon-reload, services with only their
unit's environment; set_service_environment for a double's knobs).

Each machine has a network namespace of its own, cabled to its rack's
bridge (tests/lib/rack_net.py) at its address, with a default route through
the rack router (the test host), and a sysfs of that namespace at /sys: the
test reaches its k3s API and TFTP at machine.address. It has a cgroup of its
own too (tests/lib/machine_cgroup.py), with a cgroup namespace rooted there
and cgroup2 mounted at /sys/fs/cgroup, so a real kubelet in it manages only
its own subtree, and a power cut kills every process of it at once.
"""

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.lib import machine_cgroup, rack_net

REPO = Path(__file__).resolve().parents[2]
DOUBLES_BIN = REPO / "tests/doubles/bin"
# Each live machine: a file named by its holder's pid, holding (JSON) the
# test process's pid and the mount namespace (each rack bridge has a file
# too: tests/lib/rack_net.py). A test run that was killed cannot destroy its
# machines; the next run reaps them (reap_orphans), their cgroups and bridges too.
REGISTRY = rack_net.REGISTRY

# Machine path -> directory name under the machine's root.
BINDS = {
    "/etc/rancher": "etc/rancher",
    "/var/lib/rancher": "var/lib/rancher",
    "/usr/local/bin": "usr/local/bin",
    "/etc/systemd/system": "etc/systemd/system",
    "/var/lib/rackboot": "var/lib/rackboot",
    "/etc/rackboot": "etc/rackboot",
    # A Pi's ssh host key and admin keys (firstboot/pi_access.py): never the host's.
    "/etc/ssh": "etc/ssh",
    # What the image carries: the k3s bundles, and for the jumphost's netboot
    # service (firstboot/serve.py) the Pis' boot files and root (a squashfs).
    "/usr/lib/rackboot": "usr/lib/rackboot",
    "/usr/share/rackboot/racks": "usr/share/rackboot/racks",
    # Where the jumphost mounts the Pis' root, dnsmasq's and the NFS server's files.
    "/srv/rackboot": "srv/rackboot",
    "/etc/dnsmasq.d": "etc/dnsmasq.d",
    "/etc/exports.d": "etc/exports.d",
    "/var/lib/nfs": "var/lib/nfs",
    # The systemctl stand-in's manager state, where it looks for it as real
    # systemctl finds its manager (/run/systemd/private): at a fixed path of
    # the machine, not through anyone's environment.
    "/run/systemctl-standin": "run/systemctl",
    # What a real k3s keeps outside /var/lib/rancher (its containerd's
    # sockets, the kubelet's pods and plugins, CNI's address leases and
    # config, flannel's subnet file, the pods' logs) and where containerd pins
    # pods' network namespaces: two k3s on one host must not share them.
    "/run/k3s": "run/k3s",
    "/var/lib/kubelet": "var/lib/kubelet",
    "/var/lib/cni": "var/lib/cni",
    "/run/flannel": "run/flannel",
    "/etc/cni": "etc/cni",
    "/var/log/pods": "var/log/pods",
    "/var/log/containers": "var/log/containers",
    "/run/netns": "run/netns",
}
# The machine's /run: a tmpfs on a real machine, empty after a power cut.
VOLATILE = ("/run/k3s", "/run/flannel", "/run/netns")


class Machine:
    def __init__(self, root: Path, cmdline: str, cpuinfo: str | None = None, image_files: dict | None = None,
                 network: "rack_net.RackNetwork | None" = None, address=None):
        """image_files: machine path -> host directory, bound as they are (the
        agent and profiles where the image has them, for units that run them).
        network and address: the rack's bridge and this machine's address on
        it; without them the machine is alone on a network of its own."""
        self.root = root
        self.systemctl_state = root / BINDS["/run/systemctl-standin"]
        for path in BINDS.values():
            (root / path).mkdir(parents=True, exist_ok=True)
        (root / "proc-cmdline").write_text(cmdline + "\n")
        self.own_network = network is None
        self.network = network or rack_net.RackNetwork()
        self.address = ipaddress.IPv4Address(address) if address else self.network.router + 1
        self.cgroup = machine_cgroup.MachineCgroup(root.name)
        self.holder = subprocess.Popen(self.cgroup.enter_root(
            ["unshare", "--mount", "--net", "--cgroup", "--uts", "--propagation", "private", "sleep", "infinity"]))
        ours = os.readlink("/proc/self/ns/cgroup")
        deadline = time.monotonic() + 60      # unshare on a loaded machine can take seconds
        while os.readlink(f"/proc/{self.holder.pid}/ns/cgroup") == ours:
            if self.holder.poll() is not None or time.monotonic() > deadline:
                self.holder.kill()
                raise RuntimeError(f"unshare did not make the pretend machine {root.name}'s namespaces "
                                   f"(exit status {self.holder.poll()})")
            time.sleep(0.02)
        self.namespace = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        # Never the test's own: destroy() and reap_orphans() kill every process in this namespace.
        assert self.namespace != os.readlink("/proc/self/ns/mnt"), "the pretend machine shares the test's mounts"
        self.cgroup.hold(self.holder.pid)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / str(self.holder.pid)).write_text(json.dumps({"owner": os.getpid(), "namespace": self.namespace}))
        self.cable = None
        self._own_mounts: set[int] | None = None
        try:
            self._set_up(cpuinfo, image_files)
        except BaseException:
            self.destroy()      # nothing of a half-made machine stays
            raise

    def _set_up(self, cpuinfo: str | None, image_files: dict | None) -> None:
        root = self.root
        self.cable = self.network.attach(self.holder.pid, self.address)
        binds = [(str(root / source), target) for target, source in BINDS.items()]
        binds += [(str(source), target) for target, source in (image_files or {}).items()]
        binds.append((str(root / "proc-cmdline"), "/proc/cmdline"))
        if cpuinfo is not None:      # a Pi's serial number, as its kernel shows it
            (root / "proc-cpuinfo").write_text(cpuinfo)
            binds.append((str(root / "proc-cpuinfo"), "/proc/cpuinfo"))
        # sysfs shows the network devices of the namespace that mounts it;
        # cgroup2 mounted from inside the cgroup namespace shows the machine's
        # cgroup as its root. Paths go to the script as arguments, never into its text.
        script = ('mount -t sysfs sysfs /sys && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n'
                  'while [ $# -gt 1 ]; do [ -e "$2" ] || mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done')
        self._nsenter(["sh", "-ec", script, "sh", *(path for pair in binds for path in pair)], check=True)
        self._own_mounts = {mount_id for mount_id, _ in self._mounts()}

    def _mounts(self) -> list[tuple[int, str]]:
        """(mount id, mount point) of every mount the machine sees, in the order they were made."""
        mounts = []
        for line in Path(f"/proc/{self.holder.pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            mounts.append((int(fields[0]), fields[4].encode().decode("unicode_escape")))
        return mounts

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update(PATH=f"{DOUBLES_BIN}:{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
                   PYTHONPATH=str(REPO),
                   RACKBOOT_PROFILES=str(REPO / "rack-profiles"))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def command(self, argv: list[str]) -> list[str]:
        """argv as the machine runs it: in its cgroup, and its mount, network, cgroup and
        UTS namespaces (a Pi sets its own hostname, never the host's)."""
        return self.cgroup.enter(["nsenter", "-t", str(self.holder.pid), "-m", "-n", "-C", "-u", "--", *argv])

    def _nsenter(self, argv, **kwargs):
        return subprocess.run(self.command(argv), **kwargs)

    def run(self, argv: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
        return self._nsenter(argv, env=self.env(**env), cwd=REPO, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)

    def popen(self, argv: list[str], **env) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv),
                                env=self.env(**env), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def agent(self, role: str = "jumphost", timeout: float = 900, **env) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "firstboot", "run", f"--role={role}"], timeout=timeout, **env)

    def kubeconfig(self, scratch: Path, machine_path: str = "/etc/rancher/k3s/k3s.yaml") -> Path:
        """The machine's kubeconfig as the test host uses it: k3s writes its
        API as https://127.0.0.1:PORT, which the machine reaches and the test
        host reaches at the machine's address (k3s puts its node IPs in its
        serving certificate's names: pkg/cli/server/server.go)."""
        import yaml
        config = yaml.safe_load(self.path(machine_path).read_text())
        for cluster in config["clusters"]:
            scheme, rest = cluster["cluster"]["server"].split("://", 1)
            port = rest.rsplit(":", 1)[1]
            cluster["cluster"]["server"] = f"{scheme}://{self.address}:{port}"
        scratch.mkdir(parents=True, exist_ok=True)
        out = scratch / "kubeconfig"
        out.write_text(yaml.safe_dump(config))
        out.chmod(0o600)
        return out

    def path(self, machine_path: str) -> Path:
        """Where a machine path lives on the host (only under the bound directories)."""
        for target, source in BINDS.items():
            if machine_path == target or machine_path.startswith(target + "/"):
                return self.root / source / machine_path[len(target):].lstrip("/")
        raise ValueError(f"{machine_path} is not one of the pretend machine's own directories")

    def set_service_environment(self, **values) -> None:
        """Variables for the services the machine's systemd starts from now on
        (systemctl set-environment, as systemd.setenv= on the kernel command
        line; a power cut forgets them). A service sees nothing of the
        environment of the agent or test that started it: this is how a test
        tunes a double that runs as a service (K3S_STANDIN_API_DELAY)."""
        if not values:
            return
        result = self.run(["systemctl", "set-environment", *(f"{k}={v}" for k, v in values.items())])
        assert result.returncode == 0, result.stderr

    def unset_service_environment(self, *names: str) -> None:
        result = self.run(["systemctl", "unset-environment", *names])
        assert result.returncode == 0, result.stderr

    def need_daemon_reload(self, unit: str) -> bool:
        """Whether the unit's files changed on disk since systemd loaded it."""
        result = self.run(["systemctl", "show", "-P", "NeedDaemonReload", unit])
        assert result.returncode == 0, result.stderr
        return result.stdout.strip() == "yes"

    def journal(self, unit: str) -> str:
        log = self.systemctl_state / f"{unit}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def processes(self) -> list[int]:
        return sorted(set(_processes_in(self.namespace)) | set(self.cgroup.pids()))

    def power_off(self) -> None:
        """Every process of the machine dies at once, as in a power cut: its
        cgroup is killed (services, k3s, containers), then anything that
        entered its mount namespace from outside the cgroup."""
        self.cgroup.kill()
        for _ in range(50):      # until none is left
            pids = [pid for pid in _processes_in(self.namespace) if pid != self.holder.pid]
            if not pids:
                break
            _kill(pids)
            time.sleep(0.01)
        # What the machine mounted while it ran (a mount unit's squashfs, a
        # container's root and volumes, a pod's network namespace) goes with
        # the kernel that held it, and /run with its tmpfs.
        if self._own_mounts is not None and self.holder.poll() is None:
            made = [point for mount_id, point in self._mounts() if mount_id not in self._own_mounts]
            if made:     # children first: each was made after its parent
                self._nsenter(["umount", "--lazy", *reversed(made)], capture_output=True)
        for target in VOLATILE:
            for child in self.path(target).iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        # systemd's memory goes with it: loaded units, reloads, failed units,
        # restart counts, set-environment. The journal (UNIT.log) stays.
        for entry in self.systemctl_state.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif not (entry.name.endswith(".log") or entry.name == "calls"):
                entry.unlink()

    def destroy(self) -> None:
        self.power_off()
        if self.cable:
            self.network.detach(self.cable)
        self.holder.kill()
        self.holder.wait()
        self.cgroup.remove()
        if self.own_network:
            self.network.destroy()
        (REGISTRY / str(self.holder.pid)).unlink(missing_ok=True)


def _processes_in(namespace: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns/mnt") == namespace:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:     # a killed run's pytest can linger as a zombie until its parent reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap_orphans() -> list[int]:
    """Destroy the machines of test runs that died without destroying them
    (their processes, cgroups, and the bridges they made in this network
    namespace); return their holders' pids."""
    reaped = []
    for entry in REGISTRY.glob("[0-9]*") if REGISTRY.is_dir() else []:
        try:
            text = entry.read_text()
            record = json.loads(text) if text.startswith("{") else dict(zip(("owner", "namespace"), text.split()))
            owner, namespace = int(record["owner"]), record["namespace"]
        except (OSError, ValueError, KeyError):
            continue
        if _alive(owner):
            continue          # its test run is alive
        if namespace != os.readlink("/proc/self/ns/mnt"):     # never this run's (the host's) own processes
            _kill(_processes_in(namespace))
        entry.unlink(missing_ok=True)
        reaped.append(int(entry.name))
    machine_cgroup.reap(_alive)
    rack_net.reap(_alive)
    return reaped
