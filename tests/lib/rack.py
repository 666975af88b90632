"""A pretend rack on the test host: a jumphost and Pis as pretend machines
(tests/lib/machine.py), each holding what the image would: the profiles, the
rendered rack tree and a k3s bundle (the stand-in, or the real k3s named by
RACKBOOT_K3S_BUNDLE); the jumphost also the Pis' netboot files, with stand-in
boot files (tests/test_netboot.py serves the real ones). The jumphost's
uplink is the loopback: its dnsmasq serves TFTP on the test host's 127.0.0.1,
never DHCP on a real network."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from firstboot import serve
from firstboot.layout import MACHINE
from firstboot.profile import load_profiles
from image import netboot, render
from tests.doubles import k3s_standin_bundle
from tests.lib.machine import REPO, Machine

VERSION = "v1.31.4+k3s1"


class Rack:
    def __init__(self, tmp: Path, profiles: Path, rack: str, sm_host: str):
        self.tmp = tmp
        self.rack = rack
        self.profiles = tmp / "profiles"
        shutil.copytree(profiles, self.profiles)
        shutil.copyfile(REPO / "rack-profiles/schema.json", self.profiles / "schema.json")   # as in the image
        self.env = {"SECRET_MANAGER_EMULATOR_HOST": sm_host, "RACKBOOT_PROFILES": self.profiles,
                    "RACKBOOT_READY_TIMEOUT": 60, "RACKBOOT_APPLY_TIMEOUT": 60, "RACKBOOT_JOIN_TIMEOUT": 60}
        self.machines: list[Machine] = []
        self._set_uplink_to_loopback()
        self.machine = self.add_machine("jumphost", f"console=ttyS0 rackboot.rack={rack}")
        self.boot_files = None
        self.install_netboot(self.machine)

    def add_machine(self, name: str, cmdline: str = "console=ttyAMA0", cpuinfo: str | None = None) -> Machine:
        machine = Machine(self.tmp / name, cmdline, cpuinfo, image_files={
            "/usr/lib/rackboot/firstboot": REPO / "firstboot", "/usr/lib/rackboot/rack-profiles": self.profiles})
        self.machines.append(machine)
        bundles = machine.path("/usr/lib/rackboot/k3s")
        real = k3s_standin_bundle.real_bundle()
        if real:
            shutil.copytree(real, bundles / real.name)
        else:
            k3s_standin_bundle.make(bundles, VERSION)
        self.render_into(machine)
        return machine

    def add_pi(self, name: str, serial: str) -> Machine:
        return self.add_machine(name, cpuinfo=f"processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000{serial}\n")

    def _set_uplink_to_loopback(self) -> None:
        path = self.profiles / f"{self.rack}.yaml"
        profile = yaml.safe_load(path.read_text())
        profile.setdefault("jumphost", {})["uplink"] = "lo"
        path.write_text(yaml.safe_dump(profile))

    def profile(self):
        [profile] = [p for p in load_profiles([self.profiles]) if p.rack == self.rack]
        return profile

    def render_into(self, machine: Machine) -> None:
        racks = machine.path("/usr/share/rackboot/racks")
        shutil.rmtree(racks / self.rack, ignore_errors=True)
        render.render([self.profile()], racks)
        if machine is getattr(self, "machine", None):
            self.install_netboot(machine)

    def install_netboot(self, machine: Machine) -> None:
        """What the image gives a jumphost for its Pis (image/netboot.py's
        install_into_image): the Pis' root as a squashfs with its mount unit,
        shared boot files and the rack's TFTP tree. The root is mounted when
        the agent's serve step starts that unit (at boot, on a real jumphost)."""
        profile = self.profile()
        if self.boot_files is None:
            self.boot_files = netboot.PiBootFiles(
                kernel=self._boot_file("vmlinuz-6.1.0-arm64", 300_000),
                initrd=self._boot_file("initrd.img-6.1.0-arm64", 700_001),
                firmware={"start4.elf": self._boot_file("start4.elf", 220_000),
                          "fixup4.dat": self._boot_file("fixup4.dat", 5_400)},
                device_trees={"bcm2711-rpi-4-b.dtb": self._boot_file("bcm2711-rpi-4-b.dtb", 52_000)})
        shared = machine.path("/usr/lib/rackboot/pi-boot")
        shared.mkdir(parents=True, exist_ok=True)
        for name, source in netboot.shared_boot_files(self.boot_files).items():
            shutil.copyfile(source, shared / name)
        squashfs = machine.path(str(MACHINE.pi_root_image))
        if not squashfs.exists():     # never rewritten: it may be mounted
            pi_root = self.tmp / "pi-root"
            (pi_root / "usr/lib/rackboot").mkdir(parents=True, exist_ok=True)
            (pi_root / "etc").mkdir(exist_ok=True)
            (pi_root / "etc/hostname").write_text("rackboot-pi\n")
            netboot.make_squashfs(pi_root, squashfs)
        machine.path(f"/etc/systemd/system/{serve.PI_ROOT_UNIT}").write_text(netboot.PI_ROOT_MOUNT_UNIT)
        if profile.pis:
            netboot.write_tftp_tree(profile, render.render_rack(profile), self.boot_files,
                                    machine.path(f"/usr/share/rackboot/racks/{self.rack}"),
                                    shared_at="/usr/lib/rackboot/pi-boot")

    def _boot_file(self, name: str, size: int) -> Path:
        path = self.tmp / "boot-files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size))
        return path

    def edit_profile(self, change) -> None:
        path = self.profiles / f"{self.rack}.yaml"
        profile = yaml.safe_load(path.read_text())
        change(profile)
        path.write_text(yaml.safe_dump(profile))
        self.rebuild()

    def rebuild(self) -> None:
        """What a new image does for a changed profile or a manifest file
        added or removed: each machine gets the rack's files and model again
        (the agent reads the model, not the YAML)."""
        for machine in self.machines:
            self.render_into(machine)

    def agent(self, machine: Machine | None = None, role: str = "jumphost", **env) -> subprocess.CompletedProcess:
        return (machine or self.machine).agent(role, **{**self.env, **env})

    def status(self, machine: Machine | None = None) -> dict:
        return json.loads((machine or self.machine).path("/var/lib/rackboot/status.json").read_text())

    def status_text(self, machine: Machine | None = None) -> str:
        return (machine or self.machine).run([sys.executable, "-m", "firstboot", "status"]).stdout

    def kube(self):
        from kubernetes import config
        from kubernetes.dynamic import DynamicClient
        return DynamicClient(config.new_client_from_config(str(self.machine.path("/etc/rancher/k3s/k3s.yaml"))))

    def get(self, api_version, kind, name, namespace=None):
        dyn = self.kube()
        return dyn.get(dyn.resources.get(api_version=api_version, kind=kind), name=name, namespace=namespace)

    def k3s_pid(self, machine: Machine | None = None, unit: str = "k3s.service") -> int:
        return int(((machine or self.machine).systemctl_state / f"{unit}.pid").read_text())

    def destroy(self) -> None:
        for machine in self.machines:
            machine.destroy()
