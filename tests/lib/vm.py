"""Booting the built images in QEMU, for the VM tests and the benchmarks: a
jumphost from a fresh copy of its image (or one machine booted again from its
own disk, and its power cut), reading the root filesystem of an image without
mounting it, and the virtual rack (a jumphost, its router and its Pis on one
switch). Each boot's serial log is kept under tests/artifacts/.

Waits are on events (the status port's report, a line on the serial
console), never on how long a TCG guest is expected to take.
"""

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import yaml

from firstboot.errors import RackbootError
from image import qemu, seed
from tests.doubles import k3s_standin_bundle
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib import virtual_rack
from tests.lib.rack_switch import RackSwitch

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
BOOT_TIMEOUT = 900
PI_TIMEOUT = 1200
# A report's steps when the whole run went through (report itself not listed).
ALL_DONE = {"identify": "done", "serve": "done", "token": "done", "k3s": "done", "ready": "done", "apply": "done"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def boot(profile, image: Path, name: str, agent_env: dict | None = None, with_seed: bool = True,
         while_running=None, **ports) -> dict:
    """Boot a fresh copy of the image; return the guest's report."""
    machine = Jumphost(profile, image, ARTIFACTS / name, agent_env, with_seed, **ports)
    try:
        return machine.boot(name, while_running)
    finally:
        machine.remove()   # keep the logs, not 2 GB of disk


# A Pi VM's /var/lib/rancher is a tmpfs capped at half its memory. Real k3s's
# arm64 air-gap bundle needs an estimated 600-700 MiB there (its extracted
# userspace, the copied image tarball, containerd's content and snapshots),
# which 1 GiB (512 MiB of tmpfs) cannot hold; the stand-in needs a few MiB.
PI_MEMORY_REAL_K3S_MB = 2048


class Jumphost:
    """One jumphost across boots, as a real one keeps what it has: its disk
    (a copy of the image, flashed once), its seed stick and its firmware's
    variables stay from one boot to the next. Each boot has its own serial
    log and report under tests/artifacts/NAME."""

    def __init__(self, profile, image: Path, workdir: Path, agent_env: dict | None = None,
                 with_seed: bool = True, **ports):
        workdir.mkdir(parents=True, exist_ok=True)
        self.profile, self.ports = profile, ports
        self.disk = workdir / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(self.disk)], check=True)
        self.seed = seed.make_seed(profile, workdir, agent_env) if with_seed else None
        self.files: qemu.BootFiles | None = None     # the last boot's

    def _power_on_files(self, name: str) -> list[str]:
        """Set up boot NAME's files (the firmware variables the last boot
        left); QEMU's command line."""
        files = qemu.BootFiles(ARTIFACTS / name)
        qemu.prepare(files)
        if self.files is not None:
            shutil.copyfile(self.files.vars, files.vars)
        self.files = files
        return qemu.qemu_argv(self.profile, self.disk, self.seed, files, **self.ports)

    def boot(self, name: str, while_running=None) -> dict:
        """Power on, return the agent's report once it is sent (while_running(report)
        is called before the power goes off)."""
        argv = self._power_on_files(name)
        try:
            return qemu.boot_until_report(argv, self.files, BOOT_TIMEOUT, while_running)
        except RackbootError as err:
            raise AssertionError(f"{name}: {err} ({err.hint})") from None

    def power_cut_at(self, name: str, line: str) -> str:
        """Power on, and cut the power (SIGKILL QEMU: no shutdown, no flush) as
        soon as the serial console shows line; the console up to the cut."""
        argv = self._power_on_files(name)
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as proc:
            try:
                wait_for_console(self.files, line, proc)
            finally:
                proc.kill()
                proc.wait()
        return self.files.serial_log.read_text(errors="replace")

    def reboot(self, ssh) -> None:
        """From inside, while a boot runs: `systemctl reboot` as the admin
        (ssh(*command, check=...)), then wait for the kernel's last line; with
        -no-reboot QEMU then stops, and the next boot() is the reboot."""
        ssh("sudo", "systemctl", "reboot", check=False)      # ssh may lose the connection: not an error
        wait_for_console(self.files, "reboot: Restarting system")

    def remove(self) -> None:
        self.disk.unlink(missing_ok=True)


def wait_for_console(files: qemu.BootFiles, line: str, proc: subprocess.Popen | None = None,
                     timeout: float = BOOT_TIMEOUT) -> None:
    """Until the guest's serial console shows line (polled often: a power cut
    aimed at one step of the agent must land in it)."""
    deadline = time.monotonic() + timeout
    while line not in (files.serial_log.read_text(errors="replace") if files.serial_log.exists() else ""):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"QEMU exited ({proc.returncode}) before the console showed {line!r}: "
                                 f"{proc.stderr.read().strip()[-2000:]}; see {files.serial_log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the console did not show {line!r} within {timeout:.0f} s; "
                                 f"see {files.serial_log}")
        time.sleep(0.05)


SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR")


def admin_ssh(key: Path, port: int, *command: str, check: bool = True, timeout: float = 120) -> str:
    """command on the guest as the profile's admin (rackboot), logged in with key
    through the forwarded ssh port; its output. timeout: a guard against a hung
    guest, for commands that take long under TCG (dpkg -i of a kernel)."""
    argv = ["ssh", "-i", str(key), "-p", str(port), *SSH_OPTIONS, "rackboot@127.0.0.1", *command]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout).stdout


def admin_copy(key: Path, port: int, source: Path, target: str) -> None:
    """source (a file of the host's) to target on the guest, as admin_ssh logs in (scp)."""
    subprocess.run(["scp", "-q", "-i", str(key), "-P", str(port), *SSH_OPTIONS, str(source),
                    f"rackboot@127.0.0.1:{target}"], capture_output=True, text=True, check=True, timeout=600)


def api_client(ssh, api_port: int):
    """A dynamic Kubernetes client for the guest's k3s, through the forwarded
    API port, with k3s's admin kubeconfig (read over ssh), as attach.sh did."""
    from kubernetes import config
    from kubernetes.dynamic import DynamicClient
    kubeconfig = yaml.safe_load(ssh("sudo", "cat", "/etc/rancher/k3s/k3s.yaml"))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{api_port}"
    return DynamicClient(config.new_client_from_config_dict(kubeconfig))


def partitions(image: Path) -> dict:
    """sfdisk's view of the image's partition table."""
    return json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                     text=True, check=True).stdout)["partitiontable"]


def extract_partition(image: Path, number: int, target: Path) -> Path:
    """Partition number (from 1) of image, copied out to target."""
    part = partitions(image)["partitions"][number - 1]
    subprocess.run(["dd", f"if={image}", f"of={target}", "bs=512", f"skip={part['start']}",
                    f"count={part['size']}", "conv=sparse", "status=none"], check=True)
    return target


def root_filesystem(image: Path, workdir: Path) -> Path:
    """The image's ext4 root partition, copied out (debugfs reads it in place)."""
    table = partitions(image)["partitions"]
    [number] = [n for n, p in enumerate(table, 1) if p.get("name") == "rackboot-root"]
    return extract_partition(image, number, workdir / "root.ext4")


def fat_files(filesystem: Path, names: list[str], workdir: Path) -> dict[str, Path]:
    """Files from the root of a FAT filesystem image, read with mtools."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in names:
        subprocess.run(["mcopy", "-n", "-i", str(filesystem), f"::{name}", str(workdir / name)], check=True,
                       capture_output=True)
    return {name: workdir / name for name in names}


def sdcard_boot_files(card: Path, workdir: Path) -> virtual_rack.PiBoot:
    """What a Pi's firmware takes from its card's boot partition: the kernel,
    initramfs and command line."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = fat_files(extract_partition(card, 1, workdir / "boot.vfat"),
                      ["vmlinuz", "initrd.img", "cmdline.txt"], workdir / "boot")
    (workdir / "boot.vfat").unlink()
    return virtual_rack.PiBoot(files["vmlinuz"], files["initrd.img"], files["cmdline.txt"].read_text().strip())


def debugfs(filesystem: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(filesystem)], capture_output=True,
                          text=True, check=True).stdout


def file_type(filesystem: Path, path: str) -> str | None:
    """regular, symlink, directory, ... as debugfs sees path; None if absent."""
    stat = debugfs(filesystem, f"stat {path}")
    for word in ("regular", "symlink", "directory", "FIFO", "socket", "character special", "block special"):
        if f"Type: {word}" in stat:
            return word
    return None


def ext4_header(filesystem: Path) -> dict[str, str]:
    """The filesystem's superblock fields as dumpe2fs -h prints them."""
    header = subprocess.run(["dumpe2fs", "-h", str(filesystem)], capture_output=True, text=True,
                            check=True).stdout
    return {name.strip(): value.strip() for name, _, value in
            (line.partition(":") for line in header.splitlines() if ":" in line)}


def dump_file(filesystem: Path, path: str, target: Path) -> Path:
    """A file of an ext4 filesystem image, copied out with debugfs."""
    subprocess.run(["debugfs", "-R", f"dump {path} {target}", str(filesystem)], check=True, capture_output=True)
    return target


def squashfs_entries(squashfs: Path) -> dict[str, dict]:
    """Every entry of a squashfs image, read with unsquashfs (nothing is
    mounted): path -> mode string, numeric owner, size."""
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", str(squashfs)], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        # Devices show "major, minor" where others show their size.
        match = re.fullmatch(r"(\S+) (\S+) +(\d+|\d+, *\d+) \S+ \S+ ?(.*)", line)
        if not match:
            raise AssertionError(f"unsquashfs listed an unexpected line: {line!r}")
        mode, owner, size, path = match.groups()
        entries[path.split(" -> ")[0] or "/"] = {"mode": mode, "owner": owner,
                                                 "size": int(size) if size.isdigit() else None}
    return entries


def pi_boot_files(image: Path, rack: str, workdir: Path) -> virtual_rack.PiBoot:
    """What a Pi's bootloader gets from the jumphost's TFTP tree, read from
    the image: the rack's cmdline.txt and the boot files its links point to."""
    root = root_filesystem(image, workdir)
    files = {}
    for name, path in (("cmdline.txt", f"/usr/share/rackboot/racks/{rack}/tftp/cmdline.txt"),
                       ("vmlinuz", "/usr/lib/rackboot/pi-boot/vmlinuz"),
                       ("initrd.img", "/usr/lib/rackboot/pi-boot/initrd.img")):
        if file_type(root, path) != "regular":
            raise AssertionError(f"{path} is not a file in {image}")
        subprocess.run(["debugfs", "-R", f"dump {path} {workdir / name}", str(root)], check=True,
                       capture_output=True)
        files[name] = workdir / name
    link = debugfs(root, f"stat /usr/share/rackboot/racks/{rack}/tftp/vmlinuz")
    if "Type: symlink" not in link or "/usr/lib/rackboot/pi-boot/vmlinuz" not in link:
        raise AssertionError(f"the rack's TFTP vmlinuz does not link to the shared one: {link}")
    root.unlink()
    return virtual_rack.PiBoot(files["vmlinuz"], files["initrd.img"], files["cmdline.txt"].read_text().strip())


class PiVM:
    """A Pi of the virtual rack: an arm64 virt machine on a switch port."""

    def __init__(self, name: str, boot_files: virtual_rack.PiBoot, mac: str, cable: virtual_rack.SwitchPort,
                 card: Path | None = None):
        self.name = name
        self.files = qemu.BootFiles(ARTIFACTS / name)
        self.argv = virtual_rack.pi_argv(boot_files, mac, cable, self.files, card=card,
                                         memory_mb=PI_MEMORY_REAL_K3S_MB if k3s_standin_bundle.real_bundle() else 1024)
        self.process = None

    def power_on(self) -> None:
        self.files.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.files.serial_log, self.files.status_log):
            path.unlink(missing_ok=True)
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def power_off(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def report(self, timeout: float = PI_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.files.status_log.read_text() if self.files.status_log.exists() else ""
            if "\n" in text:
                return json.loads(text.split("\n", 1)[0])
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name}: QEMU exited {self.process.returncode}: "
                                     f"{self.process.stderr.read()[-2000:]}")
            time.sleep(2)
        raise AssertionError(f"no report from {self.name} within {timeout} s; see {self.files.serial_log}")


class VirtualRack:
    """The example rack in QEMU: its router (QEMU's user network, the host at
    the router's address, ssh and API forwarded), its jumphost booted from
    the image with its seed, and its Pis (arm64 virt) booted from the image's
    TFTP tree, all on one RackSwitch. The rack token is in a Secret Manager
    double on the host; an admin key of the test's own logs in over ssh."""

    def __init__(self, profile, image: Path, workdir: Path, token: bytes, pis: int = 2, prefix: str = "rack"):
        self.profile, self.image, self.prefix = profile, image, prefix
        self.switch = RackSwitch()
        self.secret_manager = SecretManagerDouble()
        self.secret_manager.add("rackboot-example", "k3s-node-token", token)
        self.secret_manager.start()
        self.key = workdir / "admin"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.ssh_port, self.api_port = free_port(), free_port()
        boot_files = self.pi_boot = pi_boot_files(image, profile.rack, workdir)
        self.pi_cmdline = boot_files.cmdline
        self.pis = [PiVM(f"{prefix}-{pi.name}", boot_files, pi.mac, self.switch.plug())
                    for pi in profile.pis[:pis]]
        self.router = None

    def run(self, while_ready) -> dict:
        """Boot the router and the jumphost; call while_ready(jumphost report)
        once the jumphost's agent has reported; return that report."""
        port = self.secret_manager.address.rsplit(":", 1)[1]
        env = {"SECRET_MANAGER_EMULATOR_HOST": f"{self.profile.network.router}:{port}"}
        jumphost = self.profile.jumphost    # its own keys stay in the seed; the test's is one more
        admin = dataclasses.replace(self.profile, jumphost=dataclasses.replace(jumphost, ssh_authorized_keys=(
            *jumphost.ssh_authorized_keys, self.key.with_suffix(".pub").read_text().strip())))
        self.router = subprocess.Popen(
            virtual_rack.router_argv(self.profile, self.switch.plug(), self.ssh_port, self.api_port),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            return boot(admin, self.image, f"{self.prefix}-jumphost", env, while_running=while_ready,
                        netdev=self.switch.plug().netdev(qemu.NIC_NETDEV))
        finally:
            for pi in self.pis:
                pi.power_off()
            self.router.kill()
            self.router.wait()

    def router_ran_until_stopped(self) -> bool:
        return self.router is not None and self.router.returncode == -9

    def ssh(self, *command: str, check: bool = True) -> str:
        return admin_ssh(self.key, self.ssh_port, *command, check=check)

    def cluster(self) -> dict:
        """The nodes (name -> labels) and node-password hashes, read through
        the forwarded API port with k3s's admin kubeconfig."""
        dyn = api_client(self.ssh, self.api_port)
        nodes = dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items
        secrets = dyn.get(dyn.resources.get(api_version="v1", kind="Secret"), namespace="kube-system").items
        return {"nodes": {n.metadata.name: dict(n.metadata.labels) for n in nodes},
                "passwords": {s.metadata.name: s.data["hash"] for s in secrets
                              if s.metadata.name.endswith(".node-password.k3s")}}

    def close(self) -> None:
        self.secret_manager.stop()
        self.switch.close()
