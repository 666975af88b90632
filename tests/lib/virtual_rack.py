"""The virtual rack's machines in QEMU, for the VM tests and the benchmarks.

A virtual rack adds Raspberry Pis to a jumphost booted as image/qemu.py boots
it: arm64 `virt` machines (QEMU's raspi4b has no network) booted with the
kernel, initramfs and command line of the rack's TFTP tree. Then every
machine's NIC is a port of a learning switch (its cable: UDP on the host's
loopback; tests/lib/rack_switch.py), and the rack router is a QEMU of its own
(`-machine none`) whose user network sits on another port. The router must
not be on a hub with the others: QEMU's user network takes every frame it
sees as its own to route, and would answer the Pis' traffic to the jumphost
with resets.

Only the tests boot machines this way; the product's `build.py boot` boots
one jumphost on QEMU's user network (image/qemu.py).
"""

from dataclasses import dataclass
from pathlib import Path

from firstboot.profile import RackProfile
from image.qemu import STATUS_PORT_NAME, BootFiles, user_netdev


@dataclass(frozen=True)
class SwitchPort:
    """A machine's cable to the rack switch: UDP from 127.0.0.1:port to 127.0.0.1:switch."""
    switch: int
    port: int

    def netdev(self, name: str) -> str:
        return f"socket,id={name},udp=127.0.0.1:{self.switch},localaddr=127.0.0.1:{self.port}"


def router_argv(profile: RackProfile, uplink: SwitchPort, ssh_port: int | None = None,
                api_port: int | None = None) -> list[str]:
    """The rack router of a virtual rack: QEMU's user network (DHCP, the host
    at the router's address, the forwarded ports) alone on a switch port."""
    return ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none",
            "-netdev", user_netdev(profile, "router", ssh_port, api_port),
            "-netdev", uplink.netdev("uplink"),
            "-netdev", "hubport,id=hub-router,hubid=0,netdev=router",
            "-netdev", "hubport,id=hub-uplink,hubid=0,netdev=uplink"]


@dataclass(frozen=True)
class PiBoot:
    """What a Pi takes from its TFTP directory."""
    kernel: Path
    initrd: Path
    cmdline: str


def pi_argv(boot: PiBoot, mac: str, switch: SwitchPort, files: BootFiles, memory_mb: int = 1024,
            card: Path | None = None) -> list[str]:
    """An arm64 virt machine standing in for a Pi 4: the Pi's kernel, initramfs
    and command line (its console on the virt board's PL011), its MAC, and its
    SD card (a raw image, as virtio-blk: virt has no SD controller) if any."""
    disk = ["-drive", f"file={card},format=raw,if=none,id=card", "-device", "virtio-blk-pci,drive=card"]
    return [
        "qemu-system-aarch64", "-machine", "virt", "-accel", "tcg", "-cpu", "cortex-a72",
        "-smp", "2", "-m", str(memory_mb),
        "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", f"{boot.cmdline} console=ttyAMA0",
        "-netdev", switch.netdev("rack"),
        "-device", f"virtio-net-pci,netdev=rack,mac={mac}",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=status,path={files.status_log}",
        "-device", f"virtserialport,chardev=status,name={STATUS_PORT_NAME}",
        *(disk if card else []),
        "-display", "none", "-no-reboot", "-serial", f"file:{files.serial_log}", "-monitor", "none",
    ]
