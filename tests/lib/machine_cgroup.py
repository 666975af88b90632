"""Each pretend machine's own cgroup (v2), as a real machine's systemd gives
it a tree of its own: MACHINE is the root of the machine's cgroup namespace,
its processes (agent, services, k3s) live in MACHINE/system, and a real
kubelet in it makes MACHINE/kubepods beside that, so two kubelets on one test
host each manage only their own subtree. MACHINE itself holds no process:
cgroup v2 lets a kubelet give controllers to kubepods only from a cgroup
without processes of its own.

    HIERARCHY/rackboot-test/RUN/MACHINE/system    the machine's processes
    HIERARCHY/rackboot-test/RUN/MACHINE.holder    the process holding its namespaces

RUN is the test process's pid, so a killed run's cgroups are found and
killed by the next run (reap). A power cut is cgroup.kill on MACHINE: every
process of the machine at once, containers included. The holder lives
outside MACHINE, so the namespaces (and the machine's mounts) survive it.
"""

import functools
import itertools
import os
import subprocess
import time
from pathlib import Path

TOP = "rackboot-test"
# Where the tests mount cgroup2 when the host shows none (`ip netns exec`
# mounts a fresh /sys without /sys/fs/cgroup's mounts).
FALLBACK_MOUNT = Path("/run/rackboot-test-cgroup2")
_names = itertools.count(1)


@functools.cache
def hierarchy() -> Path:
    """The cgroup2 hierarchy's root as this process sees it mounted."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields[fields.index("-") + 1:]
        if after[0] == "cgroup2" and fields[3] == "/":
            return Path(fields[4])
    FALLBACK_MOUNT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "cgroup2", str(FALLBACK_MOUNT)], stdin=subprocess.DEVNULL,
                   capture_output=True, text=True, check=True)
    return FALLBACK_MOUNT


def _delegate(cgroup: Path) -> None:
    """Give cgroup's children every controller it has (best effort: a
    hybrid host's cgroup2 tree has few or none; a real kubelet needs cpu,
    memory and pids, see the README)."""
    controllers = (cgroup / "cgroup.controllers").read_text().split()
    for controller in controllers:
        try:
            (cgroup / "cgroup.subtree_control").write_text(f"+{controller}")
        except OSError:
            pass


class MachineCgroup:
    def __init__(self, name: str):
        run = hierarchy() / TOP / str(os.getpid())
        run.mkdir(parents=True, exist_ok=True)
        for level in (hierarchy() / TOP, run):
            _delegate(level)
        unique = f"{next(_names)}-{name}"
        self.path = run / unique
        self.holder = run / f"{unique}.holder"
        (self.path / "system").mkdir(parents=True)
        self.holder.mkdir()

    def enter(self, argv: list[str]) -> list[str]:
        """argv, run from the machine's system cgroup (the shell moves itself there, then execs argv)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "system/cgroup.procs"), *argv]

    def enter_root(self, argv: list[str]) -> list[str]:
        """argv, run from MACHINE itself: for the holder, whose cgroup namespace is rooted where it unshares it."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def hold(self, pid: int) -> None:
        """Move the holder out of the machine's tree once its cgroup namespace is made (rooted at MACHINE)."""
        (self.holder / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(pid) for path in self.path.rglob("cgroup.procs") for pid in path.read_text().split()]

    def kill(self) -> None:
        """Every process of the machine at once, and wait until they are gone."""
        kill_tree(self.path)

    def remove(self) -> None:
        kill_tree(self.path)
        remove_tree(self.path)
        remove_tree(self.holder)
        try:
            self.path.parent.rmdir()     # the run's, once its last machine is gone
        except OSError:
            pass


def kill_tree(cgroup: Path, timeout: float = 30) -> None:
    if not cgroup.is_dir():
        return
    (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while "populated 1" in (cgroup / "cgroup.events").read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of {cgroup} outlived cgroup.kill")
        time.sleep(0.01)


def remove_tree(cgroup: Path) -> None:
    """rmdir children first (a cgroup directory is removed only when empty of cgroups and processes)."""
    if not cgroup.is_dir():
        return
    for child in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        child.rmdir()
    cgroup.rmdir()


def reap(alive) -> list[Path]:
    """Kill and remove the cgroups of test runs whose process is not alive(pid)."""
    top = hierarchy() / TOP
    reaped = []
    for run in top.iterdir() if top.is_dir() else []:
        if run.is_dir() and run.name.isdigit() and not alive(int(run.name)):
            kill_tree(run)
            remove_tree(run)
            reaped.append(run)
    return reaped
