"""A pretend machine for running the first-boot agent on the test host.

The agent keeps its real paths (/etc/rancher, /var/lib/rancher,
/usr/local/bin, /etc/systemd/system, ...). A private mount namespace
(`unshare --mount`) binds a per-test directory over each of them and a file
over /proc/cmdline, so the agent, the k3s it installs and the services it
starts see a machine of their own, and the host is untouched apart from
empty mount points. systemctl is the stand-in in tests/doubles/bin (as
strict as systemd: units as loaded until daemon-reload, services with only
their unit's environment; set_service_environment for a double's knobs); the
network is the host's, so the test reaches the k3s API on 127.0.0.1 (and a
pretend jumphost's dnsmasq serves TFTP there: its profile's uplink is lo).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOUBLES_BIN = REPO / "tests/doubles/bin"
# Each live machine: a file named by its holder's pid, holding the test
# process's pid and the namespace. A test run that was killed cannot destroy
# its machines; the next run reaps them (reap_orphans) before their daemons
# (k3s, dnsmasq, the join service) hold its ports.
REGISTRY = Path("/run/rackboot-test-machines")

# Machine path -> directory name under the machine's root.
BINDS = {
    "/etc/rancher": "etc/rancher",
    "/var/lib/rancher": "var/lib/rancher",
    "/usr/local/bin": "usr/local/bin",
    "/etc/systemd/system": "etc/systemd/system",
    "/var/lib/rackboot": "var/lib/rackboot",
    "/etc/rackboot": "etc/rackboot",
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
}


class Machine:
    def __init__(self, root: Path, cmdline: str, cpuinfo: str | None = None, image_files: dict | None = None):
        """image_files: machine path -> host directory, bound as they are (the
        agent and profiles where the image has them, for units that run them)."""
        self.root = root
        self.systemctl_state = root / BINDS["/run/systemctl-standin"]
        for path in BINDS.values():
            (root / path).mkdir(parents=True, exist_ok=True)
        (root / "proc-cmdline").write_text(cmdline + "\n")
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"])
        ours = os.readlink("/proc/self/ns/mnt")
        for _ in range(100):
            if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != ours:
                break
            time.sleep(0.02)
        self.namespace = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / str(self.holder.pid)).write_text(f"{os.getpid()} {self.namespace}\n")
        mounts = [f"mkdir -p {target} && mount --bind {root / source} {target}" for target, source in BINDS.items()]
        mounts += [f"mkdir -p {target} && mount --bind {source} {target}" for target, source in (image_files or {}).items()]
        mounts.append(f"mount --bind {root / 'proc-cmdline'} /proc/cmdline")
        if cpuinfo is not None:      # a Pi's serial number, as its kernel shows it
            (root / "proc-cpuinfo").write_text(cpuinfo)
            mounts.append(f"mount --bind {root / 'proc-cpuinfo'} /proc/cpuinfo")
        self._nsenter(["sh", "-ec", " && ".join(mounts)], check=True)

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update(PATH=f"{DOUBLES_BIN}:{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
                   PYTHONPATH=str(REPO),
                   RACKBOOT_PROFILES=str(REPO / "rack-profiles"))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def _nsenter(self, argv, **kwargs):
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv], **kwargs)

    def run(self, argv: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
        return self._nsenter(argv, env=self.env(**env), cwd=REPO, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=timeout)

    def popen(self, argv: list[str], **env) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv],
                                env=self.env(**env), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def agent(self, role: str = "jumphost", timeout: float = 300, **env) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "firstboot", "run", f"--role={role}"], timeout=timeout, **env)

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
        return _processes_in(self.namespace)

    def power_off(self) -> None:
        """Every process of the machine dies at once, as in a power cut."""
        for _ in range(50):      # until none is left: a service's supervisor may have restarted it
            pids = [pid for pid in self.processes() if pid != self.holder.pid]
            if not pids:
                break
            _kill(pids)
            time.sleep(0.01)
        # systemd's memory goes with it: loaded units, reloads, failed units,
        # restart counts, set-environment. The journal (UNIT.log) stays.
        for entry in self.systemctl_state.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif not (entry.name.endswith(".log") or entry.name == "calls"):
                entry.unlink()

    def destroy(self) -> None:
        self.power_off()
        self.holder.kill()
        self.holder.wait()
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
    """Destroy the machines of test runs that died without destroying them;
    return their holders' pids."""
    reaped = []
    for entry in REGISTRY.glob("*") if REGISTRY.is_dir() else []:
        try:
            owner, namespace = entry.read_text().split()
        except (OSError, ValueError):
            continue
        if _alive(int(owner)):
            continue          # its test run is alive
        _kill(_processes_in(namespace))
        entry.unlink(missing_ok=True)
        reaped.append(int(entry.name))
    return reaped
