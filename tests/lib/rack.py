"""A pretend rack on the test host: a jumphost and Pis as pretend machines
(tests/lib/machine.py), each holding what the image would: the profiles, the
rendered rack tree and a k3s bundle (the stand-in, or the real k3s named by
RACKBOOT_K3S_BUNDLE); the jumphost also the Pis' netboot files, with stand-in
boot files (tests/test_netboot.py serves the real ones).

The machines sit on a bridge of their own (tests/lib/rack_net.py), the test
host being the rack router. The profile is moved onto that bridge's subnet
(every address at its offset in the profile's subnet: rack.ip() says where
one went) and the jumphost's uplink becomes its end of the cable, so its
dnsmasq serves TFTP (and DHCP, with dhcp: full) on the bridge only, never on
a real network. A Pi is at its profile address, or at a free one from
offset PI_OFFSET. The doubles on the test host are reached at the router's
address (the Secret Manager's through a relay)."""

import ipaddress
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
from tests.lib import rack_net
from tests.lib.machine import REPO, Machine

# The pretend machines' k3s (the stand-in's version); a pretend rack's profile
# names it whatever its own says (the example's wants a newer line), as an
# image built for the rack would: the tests of skew and upgrades step from it.
VERSION = "v1.31.4+k3s1"
# Against real k3s, the tests that upgrade k3s need a second real bundle (of
# a later version than RACKBOOT_K3S_BUNDLE's); without one they use the
# stand-in at two versions, and with only the first they skip.
UPGRADE_BUNDLE_ENV = "RACKBOOT_K3S_UPGRADE_BUNDLE"
PI_OFFSET = 200       # Pis without an address in the profile: from here up, as a DHCP pool would


class Rack:
    def __init__(self, tmp: Path, profiles: Path, rack: str, sm_host: str,
                 network: rack_net.RackNetwork | None = None):
        """network: another rack's, for two racks on one segment (this one's
        profile is moved into its subnet too); by default a bridge of its own."""
        self.tmp = tmp
        self.rack = rack
        self.profiles = tmp / "profiles"
        shutil.copytree(profiles, self.profiles)
        shutil.copyfile(REPO / "rack-profiles/schema.json", self.profiles / "schema.json")   # as in the image
        original = self.profile()
        self.original_subnet = original.network.subnet
        self.own_network = network is None
        self.network = network or rack_net.RackNetwork(
            original.network.subnet.prefixlen, int(original.network.router) - int(original.network.subnet.network_address))
        self._move_onto_network(original)
        if sm_host and sm_host.startswith("127.0.0.1:"):
            sm_host = self.network.expose(sm_host)
        # Real k3s takes tens of seconds to extract itself, import its images
        # and start pods (the product's own default is 300 s).
        wait = 300 if k3s_standin_bundle.real_bundle() else 60
        self.env = {"SECRET_MANAGER_EMULATOR_HOST": sm_host, "RACKBOOT_PROFILES": self.profiles,
                    "RACKBOOT_READY_TIMEOUT": wait, "RACKBOOT_APPLY_TIMEOUT": wait, "RACKBOOT_JOIN_TIMEOUT": wait}
        self.machines: list[Machine] = []
        try:
            self.machine = self.add_machine("jumphost", f"console=ttyS0 rackboot.rack={rack}",
                                            address=self.profile().jumphost.address)
        except BaseException:
            self.destroy()
            raise
        self.boot_files = None
        self.install_netboot(self.machine)

    def add_machine(self, name: str, cmdline: str = "console=ttyAMA0", cpuinfo: str | None = None,
                    address=None) -> Machine:
        machine = Machine(self.tmp / name, cmdline, cpuinfo, image_files={
            "/usr/lib/rackboot/firstboot": REPO / "firstboot", "/usr/lib/rackboot/rack-profiles": self.profiles},
            network=self.network, address=address or self._free_address())
        self.machines.append(machine)
        bundles = machine.path("/usr/lib/rackboot/k3s")
        real = k3s_standin_bundle.real_bundle()
        if real:
            shutil.copytree(real, bundles / real.name)
        else:
            k3s_standin_bundle.make(bundles, VERSION)
        self.render_into(machine)
        return machine

    def add_upgrade_bundle(self, machine: Machine, standin_version: str) -> str:
        """A later k3s on machine, as a newer image carries it beside the
        first: the real bundle named by RACKBOOT_K3S_UPGRADE_BUNDLE, or the
        stand-in at standin_version. Returns its version."""
        bundles = machine.path("/usr/lib/rackboot/k3s")
        real = os.environ.get(UPGRADE_BUNDLE_ENV)
        if real:
            shutil.copytree(real, bundles / Path(real).name)
            return json.loads((Path(real) / "bundle.json").read_text())["version"]
        if k3s_standin_bundle.real_bundle():
            raise RuntimeError(f"an upgrade to real k3s needs {UPGRADE_BUNDLE_ENV}=DIR as well")
        k3s_standin_bundle.make(bundles, standin_version)
        return standin_version

    def add_pi(self, name: str, serial: str) -> Machine:
        [address] = [pi.address for pi in self.profile().pis if pi.serial == serial] or [None]
        return self.add_machine(name, cpuinfo=f"processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000{serial}\n",
                                address=address)

    def _free_address(self) -> ipaddress.IPv4Address:
        profile = self.profile()
        taken = {m.address for m in self.machines} | {profile.network.router, profile.jumphost.address}
        taken |= {pi.address for pi in profile.pis if pi.address}
        return next(a for a in self.network.subnet.hosts()
                    if a >= self.network.subnet.network_address + PI_OFFSET and a not in taken)

    def ip(self, address: str) -> str:
        """Where an address of the profile as written went on the rack's bridge."""
        return str(self.network.translate(address, self.original_subnet))

    def _move_onto_network(self, original) -> None:
        """The profile's addresses at their offsets in the bridge's subnet, and
        the jumphost's uplink its end of the cable (rack_net.INTERFACE)."""
        path = self.profiles / f"{self.rack}.yaml"
        profile = yaml.safe_load(path.read_text())
        network = profile.setdefault("network", {})
        network.update(subnet=str(self.network.subnet), router=self.ip(original.network.router),
                       dns=[self.ip(a) if a in original.network.subnet else str(a) for a in original.network.dns])
        profile.setdefault("jumphost", {}).update(address=self.ip(original.jumphost.address),
                                                  uplink=rack_net.INTERFACE)
        # The k3s its machines' images carry (add_machine): the stand-in's, or the real bundle's.
        real = k3s_standin_bundle.real_bundle()
        profile.setdefault("k3s", {})["version"] = real.name if real else VERSION
        for pi in profile.get("pis") or []:
            if pi.get("address"):
                pi["address"] = self.ip(pi["address"])
        if original.netboot.dhcp_range:
            start, end = original.netboot.dhcp_range
            profile.setdefault("netboot", {})["dhcp_range"] = {"start": self.ip(start), "end": self.ip(end)}
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
        return DynamicClient(config.new_client_from_config(str(self.machine.kubeconfig(self.tmp / "test-host"))))

    def get(self, api_version, kind, name, namespace=None):
        dyn = self.kube()
        return dyn.get(dyn.resources.get(api_version=api_version, kind=kind), name=name, namespace=namespace)

    def k3s_pid(self, machine: Machine | None = None, unit: str = "k3s.service") -> int:
        return int(((machine or self.machine).systemctl_state / f"{unit}.pid").read_text())

    def destroy(self) -> None:
        for machine in self.machines:
            machine.destroy()
        if self.own_network:
            self.network.destroy()
