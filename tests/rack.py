"""A pretend rack on the test host: a jumphost and Pis as pretend machines
(tests/machine.py), each holding what the image would: the profiles, the
rendered rack tree and a k3s bundle (the stand-in, or the real k3s named by
RACKBOOT_K3S_BUNDLE)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from firstboot.profile import load_profiles
from image import render
from tests.doubles import k3s_standin_bundle
from tests.machine import Machine

VERSION = "v1.31.4+k3s1"


class Rack:
    def __init__(self, tmp: Path, profiles: Path, rack: str, sm_host: str):
        self.tmp = tmp
        self.rack = rack
        self.profiles = tmp / "profiles"
        shutil.copytree(profiles, self.profiles)
        self.env = {"SECRET_MANAGER_EMULATOR_HOST": sm_host, "RACKBOOT_PROFILES": self.profiles,
                    "RACKBOOT_READY_TIMEOUT": 60, "RACKBOOT_APPLY_TIMEOUT": 60}
        self.machines: list[Machine] = []
        self.machine = self.add_machine("jumphost", f"console=ttyS0 rackboot.rack={rack}")

    def add_machine(self, name: str, cmdline: str = "console=ttyAMA0", cpuinfo: str | None = None) -> Machine:
        machine = Machine(self.tmp / name, cmdline, cpuinfo)
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

    def render_into(self, machine: Machine) -> None:
        racks = machine.path("/usr/share/rackboot/racks")
        shutil.rmtree(racks / self.rack, ignore_errors=True)
        render.render([p for p in load_profiles([self.profiles]) if p.rack == self.rack], racks)

    def edit_profile(self, change) -> None:
        path = self.profiles / f"{self.rack}.yaml"
        profile = yaml.safe_load(path.read_text())
        change(profile)
        path.write_text(yaml.safe_dump(profile))
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
