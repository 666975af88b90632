"""The virtual rack's jumphost swapped while its Pis run (issue 15): the
jumphost VM killed (SIGKILL to its QEMU: no shutdown, nothing flushed), a
fresh copy of the same image booted with the same seed at the same address
on the same switch, and the Pis left running. Call swap_jumphost from
VirtualRack.run's while_ready (the first jumphost up, its Pis joined); it
returns what the test asserts:

  seconds      from the kill to both Pis Ready in the new cluster (printed)
  report       the fresh jumphost's agent report (its apply step: the rack's YAML applied again)
  before/after node name -> (Ready status, bootID: the kubelet's own) in the old and the new cluster:
               a Pi's bootID unchanged is a Pi not rebooted
  pis_running  each Pi's QEMU still the one started before the swap
  pi_watch     each Pi's console lines of its watcher after the swap (firstboot/pi_watch.py)
  exports, nfs_peers   the new jumphost's NFS export and the Pis' NFS connections to it

Waits are on events with a deadline (SWAP_TIMEOUT, the issue's 10 minutes,
for the Pis; the jumphost's own boot has vm.BOOT_TIMEOUT). The fresh
jumphost fetches the rack token once more: the Secret Manager double's calls
grow by one."""

import dataclasses
import os
import signal
import time
from pathlib import Path

from image import qemu
from tests.lib import vm

SWAP_TIMEOUT = 600


def jumphost_qemu(rack) -> int:
    """The pid of the running jumphost's QEMU, found by its own disk copy (this test's only)."""
    disk = f"file={vm.ARTIFACTS / f'{rack.prefix}-jumphost' / 'disk.img'},"
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and any(a.startswith(disk.encode()) for a in argv):
            return int(entry.name)
    raise AssertionError(f"no QEMU runs the jumphost's disk {disk}")


def kill(pid: int) -> None:
    """SIGKILL, then until the process is gone or a zombie (its parent reaps it later)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.2)
    raise AssertionError(f"the jumphost's QEMU ({pid}) outlived SIGKILL by a minute")


def nodes(rack) -> dict:
    """name -> (Ready status, bootID) through the forwarded API port; {} while the API does not answer."""
    try:
        dyn = vm.api_client(rack.ssh, rack.api_port)
        found = dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items
    except Exception:      # the jumphost is booting: ssh, the kubeconfig or the API not there yet
        return {}
    return {n.metadata.name: (next((c.status for c in n.status.conditions if c.type == "Ready"), None),
                              n.status.nodeInfo.bootID) for n in found}


def wait_ready(rack, names: list[str], deadline: float) -> dict:
    while True:
        found = nodes(rack)
        if all(found.get(name, (None,))[0] == "True" for name in names):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"Pis not Ready within {SWAP_TIMEOUT} s of the swap: {found}")
        time.sleep(5)


def _inputs(rack):
    """The profile and agent environment VirtualRack.run booted the first jumphost with: the same seed."""
    own = rack.profile.jumphost
    test_key = rack.key.with_suffix(".pub").read_text().strip()
    profile = dataclasses.replace(rack.profile, jumphost=dataclasses.replace(
        own, ssh_authorized_keys=(*own.ssh_authorized_keys, test_key)))
    sm_port = rack.secret_manager.address.rsplit(":", 1)[1]
    return profile, {"SECRET_MANAGER_EMULATOR_HOST": f"{rack.profile.network.router}:{sm_port}"}


def swap_jumphost(rack, pis: dict | None = None, name: str = "jumphost-swapped", then=None) -> dict:
    """pis: node name -> the running PiVM (by default the rack's first Pis, as
    VirtualRack made them); then(): more on the swapped-in jumphost while it
    runs (its result is seen["then"])."""
    pis = pis or {pi.name: vm_ for pi, vm_ in zip(rack.profile.pis, rack.pis)}
    names, machines = list(pis), list(pis.values())
    seen = {"before": wait_ready(rack, names, time.monotonic() + SWAP_TIMEOUT)}
    pids = [pi.process.pid for pi in machines]
    console_at = [pi.files.serial_log.stat().st_size for pi in machines]
    profile, env = _inputs(rack)
    started = time.monotonic()
    kill(jumphost_qemu(rack))

    def when_up(report):
        seen["report"] = report
        seen["after"] = wait_ready(rack, names, started + SWAP_TIMEOUT)
        seen["seconds"] = round(time.monotonic() - started)
        print(f"jumphost swap to both Pis Ready: {seen['seconds']} s")
        seen["exports"] = rack.ssh("sudo", "exportfs", "-v")
        seen["nfs_peers"] = rack.ssh("ss", "-Htn", "state", "established", "sport", "=", ":2049")
        if then is not None:
            seen["then"] = then()

    vm.boot(profile, rack.image, f"{rack.prefix}-{name}", env, while_running=when_up,
            netdev=rack.switch.plug().netdev(qemu.NIC_NETDEV))
    seen["pis_running"] = [pi.process.poll() is None and pi.process.pid == pid for pi, pid in zip(machines, pids)]
    consoles = [pi.files.serial_log.read_bytes()[at:].decode(errors="replace") for pi, at in zip(machines, console_at)]
    seen["pi_watch"] = {node: [line for line in text.splitlines() if "pi-watch:" in line]
                        for node, text in zip(names, consoles)}
    return seen
