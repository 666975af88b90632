"""VM tier: the virtual rack. The example rack's jumphost image boots in QEMU
(x86-64, UEFI, TCG) and two Pis boot as arm64 `virt` machines on one
layer-2 segment with it (image/qemu.py: each Pi's cable is a UDP link on the
host's loopback to a hub in the jumphost's QEMU, where the user network
stands in for the rack router).

Each Pi boots the kernel, initramfs and cmdline.txt of the jumphost image's
TFTP tree for the rack (QEMU's raspi4b has no network, so the test hands the
Pi what its bootloader would fetch; tests/test_netboot.py checks that
dnsmasq serves exactly these files), gets its address by DHCP, mounts the
jumphost's NFS root read-only under a tmpfs overlay, finds its name by its
MAC, fetches the agent token from the jumphost's join service and joins the
cluster (k3s stand-in, or real k3s with RACKBOOT_K3S_BUNDLE). Then one Pi is
power-cycled: it comes back with nothing of its own (all in RAM) and rejoins
as the same node.
"""

import dataclasses
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from firstboot import join
from image import qemu
from tests.doubles.secret_manager import SecretManagerDouble
from tests.test_vm_jumphost import ARTIFACTS, ALL_DONE, _debugfs, _free_port, _root_filesystem, boot

pytestmark = pytest.mark.vm

TOKEN = b"rackboot-virtual-rack-token-never-logged"
PI_TIMEOUT = 1200


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pi_boot_files(image: Path, rack: str, workdir: Path) -> qemu.PiBoot:
    """What a Pi's bootloader gets from the jumphost's TFTP tree, read from
    the image: the rack's cmdline.txt and the boot files its links point to."""
    root = _root_filesystem(image, workdir)
    files = {}
    for name, path in (("cmdline.txt", f"/usr/share/rackboot/racks/{rack}/tftp/cmdline.txt"),
                       ("vmlinuz", "/usr/lib/rackboot/pi-boot/vmlinuz"),
                       ("initrd.img", "/usr/lib/rackboot/pi-boot/initrd.img")):
        assert "Type: regular" in _debugfs(root, f"stat {path}"), path
        subprocess.run(["debugfs", "-R", f"dump {path} {workdir / name}", str(root)], check=True,
                       capture_output=True)
        files[name] = workdir / name
    link = _debugfs(root, f"stat /usr/share/rackboot/racks/{rack}/tftp/vmlinuz")
    assert "Type: symlink" in link and "/usr/lib/rackboot/pi-boot/vmlinuz" in link
    root.unlink()
    return qemu.PiBoot(files["vmlinuz"], files["initrd.img"], files["cmdline.txt"].read_text().strip())


class PiVM:
    def __init__(self, name: str, boot_files: qemu.PiBoot, mac: str, link: qemu.PiLink):
        self.files = qemu.BootFiles(ARTIFACTS / name)
        self.argv = lambda: qemu.pi_argv(boot_files, mac, link, self.files)
        self.process = None

    def power_on(self) -> None:
        self.files.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.files.serial_log, self.files.status_log):
            path.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def power_off(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def report(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.files.status_log.read_text() if self.files.status_log.exists() else ""
            if "\n" in text:
                return json.loads(text.split("\n", 1)[0])
            if self.process.poll() is not None:
                raise AssertionError(f"Pi QEMU exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
            time.sleep(2)
        raise AssertionError(f"no report from the Pi within {timeout} s; see {self.files.serial_log}")


@pytest.fixture
def secret_manager():
    double = SecretManagerDouble()
    double.add("rackboot-example", "k3s-node-token", TOKEN)
    double.start()
    yield double
    double.stop()


def test_virtual_rack_joins_and_a_power_cycled_pi_rejoins(example_image, secret_manager, tmp_path):
    profile, out, _ = example_image
    boot_files = _pi_boot_files(out / "jumphost.img", profile.rack, tmp_path)
    assert f"nfsroot={profile.jumphost.address}:{profile.netboot.nfs_root}" in boot_files.cmdline
    pis = profile.pis[:2]
    links = tuple(qemu.PiLink(_free_udp_port(), _free_udp_port()) for _ in pis)
    vms = [PiVM(f"pi-{pi.name}", boot_files, pi.mac, link) for pi, link in zip(pis, links)]
    port = secret_manager.address.rsplit(":", 1)[1]
    env = {"SECRET_MANAGER_EMULATOR_HOST": f"{profile.network.router}:{port}"}
    key = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    admin = dataclasses.replace(profile, jumphost=dataclasses.replace(
        profile.jumphost, ssh_authorized_keys=(key.with_suffix(".pub").read_text().strip(),)))
    ssh_port, api_port = _free_port(), _free_port()
    seen = {}

    def nodes() -> dict:
        ssh = ["ssh", "-i", str(key), "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "rackboot@127.0.0.1"]
        kubeconfig = yaml.safe_load(subprocess.run([*ssh, "sudo", "cat", "/etc/rancher/k3s/k3s.yaml"],
                                                   capture_output=True, text=True, check=True, timeout=120).stdout)
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{api_port}"
        from kubernetes import config
        from kubernetes.dynamic import DynamicClient
        dyn = DynamicClient(config.new_client_from_config_dict(kubeconfig))
        found = dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items
        secrets = dyn.get(dyn.resources.get(api_version="v1", kind="Secret"), namespace="kube-system").items
        return {"nodes": {n.metadata.name: dict(n.metadata.labels) for n in found},
                "passwords": {s.metadata.name: s.data["hash"] for s in secrets
                              if s.metadata.name.endswith(".node-password.k3s")}}

    def rack_up(report):
        seen["jumphost"] = report
        assert report["steps"] == ALL_DONE, report["errors"]
        try:
            for vm in vms:
                vm.power_on()
            seen["pis"] = [vm.report(PI_TIMEOUT) for vm in vms]
            seen["joined"] = nodes()
            # Power cut on the first Pi: it comes back with an empty overlay and rejoins.
            vms[0].power_off()
            vms[0].power_on()
            seen["rebooted"] = vms[0].report(PI_TIMEOUT)
            seen["after_reboot"] = nodes()
        finally:
            for vm in vms:
                vm.power_off()

    boot(admin, out / "jumphost.img", "rack-jumphost", env, while_running=rack_up,
         ssh_port=ssh_port, api_port=api_port, pi_links=links)

    for pi, report in zip(pis, seen["pis"]):
        assert report["identity"] == {"rack": "example", "role": "pi", "node": pi.name, "source": "MAC"}, report
        assert report["steps"] == ALL_DONE, report["errors"]
        assert report["failed_units"] == []
    for vm in vms:
        console = vm.files.serial_log.read_bytes()
        assert b"rackboot: root is the NFS root with a tmpfs overlay" in console
        assert TOKEN not in console and join.agent_token(TOKEN) not in console
    joined = seen["joined"]["nodes"]
    assert set(joined) == {"jumphost-example", *(pi.name for pi in pis)}
    first = joined[pis[0].name]
    assert first["rackboot.dev/rack"] == "example" and first["rackboot.dev/role"] == "pi"
    assert first["rackboot.dev/model"] == "pi4" and first["example.dev/device-pool"] == "android"
    assert "example.dev/device-pool" not in joined[pis[1].name]
    # The power-cycled Pi is the same node, with the same password, and no other appeared.
    assert seen["rebooted"]["identity"]["node"] == pis[0].name
    assert seen["rebooted"]["steps"]["k3s"] == "done", seen["rebooted"]["errors"]
    assert seen["after_reboot"]["nodes"].keys() == joined.keys()
    assert seen["after_reboot"]["passwords"] == seen["joined"]["passwords"]
