"""Boot a jumphost image in QEMU with UEFI firmware (OVMF), as a real one boots.

The guest's network is QEMU's user networking shaped like the rack's: the
rack subnet, with the host standing in for the rack router at the router's
address. So the seed's static address works unchanged, and the guest reaches
services on the host's loopback at the router address. (The tests' virtual
rack puts the NIC on a switch instead: tests/lib/virtual_rack.py.)

TCG is the default: on these build machines /dev/kvm exists but guests hang
under it (FIELD-NOTES.md). KVM only when asked, and only if /dev/kvm opens.
"""

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from firstboot.errors import RackbootError
from firstboot.profile import RackProfile

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
STATUS_PORT_NAME = "org.rackboot.status"
NIC_NETDEV = "rack"     # the -netdev id of the jumphost's NIC


@dataclass(frozen=True)
class BootFiles:
    """Where one boot keeps its disk copy, firmware variables and logs."""
    workdir: Path

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def status_log(self) -> Path:
        return self.workdir / "status.jsonl"

    @property
    def vars(self) -> Path:
        return self.workdir / "OVMF_VARS.fd"


def accelerator(kvm: bool) -> str:
    if not kvm:
        return "tcg"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as err:
        raise RackbootError(f"--kvm: cannot open /dev/kvm ({err.strerror})",
                            hint="boot without --kvm (TCG)") from None
    os.close(fd)
    return "kvm"


def user_netdev(profile: RackProfile, name: str, ssh_port: int | None, api_port: int | None) -> str:
    """QEMU's user network as the rack's router: DHCP, the host at the router's
    address, ssh and the k3s API forwarded from the host's loopback."""
    net = profile.network
    first_dynamic = net.subnet.network_address + max(16, net.subnet.num_addresses // 2)
    # QEMU answers DNS at its own address (subnet .3), which must differ from the router.
    netdev = f"user,id={name},net={net.subnet},host={net.router},dhcpstart={first_dynamic}"
    if ssh_port:
        netdev += f",hostfwd=tcp:127.0.0.1:{ssh_port}-{profile.jumphost.address}:22"
    if api_port:     # the rack's k3s API, as attach.sh's ssh -L would give it
        netdev += f",hostfwd=tcp:127.0.0.1:{api_port}-{profile.jumphost.address}:{profile.k3s.api_port}"
    return netdev


def qemu_argv(profile: RackProfile, disk: Path, seed: Path | None, files: BootFiles,
              kvm: bool = False, memory_mb: int = 2048, ssh_port: int | None = None,
              api_port: int | None = None, netdev: str | None = None,
              interactive: bool = False) -> list[str]:
    """netdev: the NIC's -netdev, with id NIC_NETDEV, instead of QEMU's user
    network (which forwards ssh_port and api_port)."""
    for firmware in (OVMF_CODE, OVMF_VARS):
        if not firmware.exists():
            raise RackbootError(f"UEFI firmware {firmware} is missing", hint="apt-get install ovmf")
    nic = netdev or user_netdev(profile, NIC_NETDEV, ssh_port, api_port)
    argv = [
        "qemu-system-x86_64", "-machine", "q35", "-accel", accelerator(kvm),
        "-cpu", "host" if kvm else "max", "-smp", "2", "-m", str(memory_mb),
        "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive", f"if=pflash,format=raw,file={files.vars}",
        "-drive", f"file={disk},format=raw,if=virtio",
        "-netdev", nic, "-device", f"virtio-net-pci,netdev={NIC_NETDEV}",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=status,path={files.status_log}",
        "-device", f"virtserialport,chardev=status,name={STATUS_PORT_NAME}",
        "-display", "none", "-no-reboot",
    ]
    if seed:
        argv += ["-drive", f"file={seed},format=raw,if=virtio,readonly=on"]
    if interactive:
        argv += ["-serial", "mon:stdio"]
    else:
        argv += ["-serial", f"file:{files.serial_log}", "-monitor", "none"]
    return argv


def prepare(files: BootFiles) -> None:
    files.workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OVMF_VARS, files.vars)
    for path in (files.serial_log, files.status_log):
        path.unlink(missing_ok=True)


def boot_until_report(argv: list[str], files: BootFiles, timeout: float, while_running=None) -> dict:
    """Boot, wait for the agent's report on the status port, then stop the VM.
    while_running(report), if given, is called with the VM still up."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                report = _read_report(files.status_log)
                if report is not None:
                    if while_running is not None:
                        while_running(report)
                    return report
                if proc.poll() is not None:
                    raise RackbootError(f"QEMU exited ({proc.returncode}) before the guest reported: "
                                        f"{proc.stderr.read().strip()[-2000:]}",
                                        hint=f"see the serial log {files.serial_log}")
                time.sleep(2)
            raise RackbootError(f"no report from the guest within {timeout:.0f} s",
                                hint=f"see the serial log {files.serial_log}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _read_report(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    line = text.split("\n", 1)[0] if "\n" in text else ""
    return json.loads(line) if line else None
