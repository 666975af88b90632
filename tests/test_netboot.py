"""The Pi netboot tree and the jumphost's dnsmasq serving it.

The conformance test replays a Raspberry Pi 4 bootloader's TFTP requests
(serial directory probe, fall back to the root for an unknown Pi, config.txt,
firmware, device tree, optional files it asks for and may miss, cmdline.txt,
kernel, initramfs) against real dnsmasq, started with the rack's rendered
configuration in a network namespace of its own, and checks every answer
byte for byte. The fast tier serves a tree written from stand-in boot files;
the vm tier builds the real arm64 root filesystem (Debian's raspi-firmware,
kernel and NFS initramfs) with `netboot.build`, serves that, and checks the
NFS root written beside it.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from firstboot.profile import BootDirBy, DhcpMode, load_profiles
from image import k3s_bundle, netboot, render
from tests.doubles import k3s_standin_bundle
from tests.lib.machine import REPO

EXAMPLE = REPO / "rack-profiles/example.yaml"
# The order a Pi 4 bootloader asks in (raspberrypi/documentation, "Network boot"),
# after finding its serial directory; files marked optional may be missing.
SEQUENCE = ["start4.elf", "config.txt", "pieeprom.sig", "recovery.elf", "start4.elf", "fixup4.dat",
            "bcm2711-rpi-4-b.dtb", "overlays/overlay_map.dtb", "cmdline.txt", "vmlinuz", "initrd.img"]
OPTIONAL = {"pieeprom.sig", "recovery.elf", "overlays/overlay_map.dtb"}
PI_PORT = "pi0"


@pytest.fixture(scope="module")
def profile():
    [example] = load_profiles([EXAMPLE])
    return example


def standin_boot_files(directory: Path) -> netboot.PiBootFiles:
    """Files with the right names and distinct contents, for the fast tier."""
    directory.mkdir()
    def make(name, size):
        path = directory / name
        path.write_bytes(os.urandom(size))
        return path
    return netboot.PiBootFiles(
        kernel=make("vmlinuz-6.1.0-arm64", 300_000), initrd=make("initrd.img-6.1.0-arm64", 700_001),
        firmware={"start4.elf": make("start4.elf", 2_200_000), "fixup4.dat": make("fixup4.dat", 5_400)},
        device_trees={"bcm2711-rpi-4-b.dtb": make("bcm2711-rpi-4-b.dtb", 52_000)})


class Dnsmasq:
    """The jumphost's dnsmasq, configured from the rendered file, in a private
    network namespace (its own loopback: TFTP's port 69 is free there)."""

    def __init__(self, conf_text: str, tftp_root: Path, tftp_root_in_conf: str, workdir: Path,
                 uplink: tuple[str, str] | None = None):
        """uplink: (interface, address/prefix) for the jumphost's side of a
        link whose other end (PI_PORT) is a Pi's, in a namespace of its own."""
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.pi_holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        time.sleep(0.2)
        self.nsenter = ["nsenter", "-t", str(self.holder.pid), "-n", "--"]
        self.pi_nsenter = ["nsenter", "-t", str(self.pi_holder.pid), "-n", "--"]
        subprocess.run([*self.nsenter, "ip", "link", "set", "lo", "up"], check=True)
        if uplink:
            name, address = uplink
            for command in (["ip", "link", "add", name, "type", "veth", "peer", "name", PI_PORT],
                            ["ip", "link", "set", PI_PORT, "netns", str(self.pi_holder.pid)],
                            ["ip", "address", "add", address, "dev", name],
                            ["ip", "link", "set", name, "up"]):
                subprocess.run([*self.nsenter, *command], check=True)
            subprocess.run([*self.pi_nsenter, "ip", "link", "set", PI_PORT, "up"], check=True)
        assert f"tftp-root={tftp_root_in_conf}" in conf_text
        conf = workdir / "dnsmasq.conf"
        conf.write_text(conf_text.replace(f"tftp-root={tftp_root_in_conf}", f"tftp-root={tftp_root}")
                        + "interface=lo\n")
        self.log = workdir / "dnsmasq.log"
        subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], check=True, capture_output=True)
        self.process = subprocess.Popen([*self.nsenter, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                                         f"--conf-file={conf}", f"--log-facility={self.log}",
                                         f"--dhcp-leasefile={workdir / 'leases'}",
                                         "--user=root", "--pid-file="])
        for _ in range(50):
            if self.log.exists() and "TFTP root" in self.log.read_text():
                break
            time.sleep(0.1)

    def fetch(self, names: list[str], out: Path) -> list[dict]:
        out.mkdir(exist_ok=True)
        result = subprocess.run([*self.nsenter, sys.executable, "-m", "tests.lib.tftp_client", "127.0.0.1", *names,
                                 "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def ask_dhcp(self, mac: str) -> dict:
        """A Pi 4 bootloader's DHCPDISCOVER from the Pi's port; the answer."""
        result = subprocess.run([*self.pi_nsenter, sys.executable, "-m", "tests.lib.dhcp_client", PI_PORT, mac],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr + self.log.read_text()
        return json.loads(result.stdout)

    def stop(self):
        self.process.terminate()
        self.process.wait()
        for holder in (self.holder, self.pi_holder):
            holder.kill()
            holder.wait()


def check_conformance(profile, tree: Path, workdir: Path) -> None:
    rendered = render.render_rack(profile)
    conf = rendered[PurePosixPath("jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf")]
    server = Dnsmasq(conf, tree, profile.netboot.tftp_root, workdir)
    try:
        known = profile.pis[0].serial
        # A known Pi: its serial directory answers, and every later request is under it.
        answers = server.fetch([f"{known}/{name}" for name in SEQUENCE], workdir / "known")
        for name, answer in zip(SEQUENCE, answers):
            if name in OPTIONAL:
                assert not answer["ok"] and answer["error_code"] == 1, answer   # "file not found"
                continue
            assert answer["ok"], answer
            expected = (tree / name).read_bytes()
            assert Path(answer["saved"]).read_bytes() == expected, name
            assert answer["tsize"] == len(expected) and answer["blksize"] == 1468
        cmdline = (tree / known / "cmdline.txt").read_text()
        assert f"nfsroot={profile.jumphost.address}:{profile.netboot.nfs_root}" in cmdline
        for flag in ("root=/dev/nfs", "ip=dhcp", "cgroup_memory=1", "cgroup_enable=memory", "rootwait"):
            assert flag in cmdline.split()
        assert "arm_64bit=1" in (tree / known / "config.txt").read_text().splitlines()
        # An unknown Pi: the probe fails, it falls back to the root and gets the same files.
        probe, *fallback = server.fetch(["deadbeef/start4.elf", "start4.elf", "config.txt", "cmdline.txt"],
                                        workdir / "unknown")
        assert not probe["ok"] and probe["error_code"] == 1
        for name, answer in zip(["start4.elf", "config.txt", "cmdline.txt"], fallback):
            assert answer["ok"] and Path(answer["saved"]).read_bytes() == (tree / name).read_bytes()
        # Nothing outside the TFTP root.
        [escape] = server.fetch(["../dnsmasq.conf"], workdir / "escape")
        assert not escape["ok"]
    finally:
        server.stop()
    assert "sent" in server.log.read_text()      # dnsmasq's own log saw the transfers


def test_tree_layout(profile, tmp_path):
    files = standin_boot_files(tmp_path / "boot")
    tree = netboot.write_tftp_tree(profile, render.render_rack(profile), files, tmp_path / "out")
    assert tree == tmp_path / "out/tftp"
    top = sorted(p.name for p in tree.iterdir())
    assert top == sorted(["0a1b2c01", "0a1b2c02", "bcm2711-rpi-4-b.dtb", "cmdline.txt", "config.txt",
                          "fixup4.dat", "initrd.img", "start4.elf", "vmlinuz"])
    for pi in profile.pis:
        entries = {p.name: os.readlink(p) for p in (tree / pi.serial).iterdir()}
        assert entries["start4.elf"] == "../start4.elf" and len(entries) == 7
    assert (tree / "vmlinuz").read_bytes() == files.kernel.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tftp"]     # no staging left


def test_tree_by_mac(profile, tmp_path):
    import dataclasses
    by_mac = dataclasses.replace(profile, netboot=dataclasses.replace(profile.netboot, boot_dir_by=BootDirBy.MAC))
    tree = netboot.write_tftp_tree(by_mac, render.render_rack(by_mac), standin_boot_files(tmp_path / "b"),
                                   tmp_path / "out")
    assert (tree / "dc-a6-32-00-00-01" / "start4.elf").exists()


@pytest.mark.machine     # network namespaces
def test_dnsmasq_serves_the_pi4_request_sequence(profile, tmp_path):
    tree = netboot.write_tftp_tree(profile, render.render_rack(profile), standin_boot_files(tmp_path / "boot"),
                                   tmp_path / "out")
    check_conformance(profile, tree, tmp_path)


@pytest.mark.machine     # network namespaces
@pytest.mark.parametrize("mode", ["proxy", "full"])
def test_dnsmasq_answers_the_pi4_dhcp_discover(profile, mode, tmp_path):
    """The DHCP half of a Pi's network boot: a DISCOVER like the Pi 4
    bootloader's, on the jumphost's uplink, gets an offer it would boot from
    (PXEClient, the "Raspberry Pi Boot" menu entry, from the jumphost, which
    is then its TFTP server); in proxy mode without an address (the router gives those), in
    full mode with the Pi's static lease and the router."""
    import dataclasses
    pi = dataclasses.replace(profile.pis[0], address=ipaddress.IPv4Address("192.168.1.101"))
    dhcp_range = (ipaddress.IPv4Address("192.168.1.100"), ipaddress.IPv4Address("192.168.1.199"))
    rack = dataclasses.replace(profile, pis=type(profile.pis)([pi, *profile.pis[1:]]),
                               netboot=dataclasses.replace(profile.netboot, dhcp=DhcpMode(mode),
                                                           dhcp_range=dhcp_range if mode == "full" else None))
    conf = render.render_rack(rack)[PurePosixPath("jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf")]
    tree = netboot.write_tftp_tree(rack, render.render_rack(rack), standin_boot_files(tmp_path / "boot"),
                                   tmp_path / "out")
    jumphost = f"{rack.jumphost.address}/{rack.network.subnet.prefixlen}"
    server = Dnsmasq(conf, tree, rack.netboot.tftp_root, tmp_path, uplink=(rack.jumphost.uplink, jumphost))
    try:
        offer = server.ask_dhcp(pi.mac)
    finally:
        server.stop()
    assert offer["op"] == 2 and offer["type"] == "OFFER" and offer["chaddr"] == pi.mac, offer
    assert offer["vendor_class"] == "PXEClient", offer
    assert "Raspberry Pi Boot" in offer["pxe_menu"], offer
    # The bootloader asks TFTP of the server that made this offer (its server identifier,
    # option 54), not of siaddr or option 66 (raspberrypi/firmware#801, #1265): the jumphost.
    assert offer["server_id"] == str(rack.jumphost.address), offer
    if mode == "proxy":
        assert offer["yiaddr"] == "0.0.0.0" and offer["router"] is None, offer
    else:
        assert offer["yiaddr"] == "192.168.1.101" and offer["router"] == str(rack.network.router), offer
    assert "proxy" in server.log.read_text() if mode == "proxy" else "DHCPOFFER" in server.log.read_text()


def initramfs_archives(image: bytes) -> list[bytes]:
    """The cpio archives of an initramfs as the kernel reads it: uncompressed
    ones first (Debian 13's initramfs-tools puts the modules, already
    xz-compressed, there), then one compressed (gzip or zstd, which zstd
    reads both of) to the end; zeros may pad between them."""
    archives, offset = [], 0
    while image[offset:offset + 6] in (b"070701", b"070702"):
        start = offset
        while True:     # newc entries: a 110-byte header, the name, the data, each padded to 4 bytes
            name_size, data_size = int(image[offset + 94:offset + 102], 16), int(image[offset + 54:offset + 62], 16)
            name = image[offset + 110:offset + 110 + name_size - 1]
            offset = (offset + 110 + name_size + 3) // 4 * 4
            offset = (offset + data_size + 3) // 4 * 4
            if name == b"TRAILER!!!":
                break
        archives.append(image[start:offset])
        while offset < len(image) and image[offset] == 0:
            offset += 1
    if offset < len(image):
        archives.append(subprocess.run(["zstd", "-dc"], input=image[offset:], capture_output=True, check=True).stdout)
    return archives


@pytest.mark.vm
def test_real_pi_tree_from_debian(profile, tmp_path):
    """The real tree: Debian's arm64 kernel, its NFS initramfs, raspi-firmware."""
    if os.geteuid() != 0:
        pytest.skip("building the Pi root filesystem needs root")
    bundle = k3s_bundle.verify(k3s_standin_bundle.make(tmp_path / "k3s", profile.k3s.version))
    tree, pi_root = netboot.build(profile, tmp_path / "out", k3s_bundle=bundle)
    # The NFS root: the agent with arm64 libraries, its units enabled, no machine state.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pi-root", "tftp"]
    assert (pi_root / "usr/lib/rackboot/firstboot/join.py").is_file()
    assert (pi_root / "usr/lib/rackboot/rack-profiles/example.yaml").is_file()
    grpc = list((pi_root / "usr/lib/rackboot/site-packages/grpc/_cython").glob("cygrpc*.so"))
    assert grpc and "aarch64" in grpc[0].name
    # Wheels and byte code for the root's own python (3.13 on Debian 13, whatever the build host runs):
    # the Pis' read-only root cannot keep byte code they write.
    [python] = [p.name.removeprefix("python").replace(".", "")
                for p in (pi_root / "usr/lib").glob("python3.[0-9]*") if (p / "os.py").is_file()]
    assert f"cpython-{python}-aarch64" in grpc[0].name
    site_packages = pi_root / "usr/lib/rackboot/site-packages"
    assert (site_packages / f"kubernetes/__pycache__/__init__.cpython-{python}.pyc").is_file()
    other = [path for path in site_packages.rglob("*.pyc") if f".cpython-{python}." not in path.name]
    assert not other, other[:3]
    units = pi_root / "etc/systemd/system"
    assert "--role=pi" in (units / "rackboot-firstboot.service").read_text()
    for wants, unit in (("multi-user.target.wants", "rackboot-firstboot.service"),
                        ("local-fs.target.wants", "var-lib-rancher.mount")):      # enabled: links inside the root
        assert os.readlink(units / wants / unit) == f"/etc/systemd/system/{unit}"
    assert (pi_root / "etc/machine-id").read_text() == "" and not list((pi_root / "etc/ssh").glob("ssh_host_*"))
    assert (pi_root / "etc/initramfs-tools/scripts/nfs-bottom/rackboot-overlay").is_file()
    assert sorted(p.name for p in (pi_root / "usr/lib/rackboot/k3s" / profile.k3s.version).iterdir()) == [
        "k3s-airgap-images-arm64.tar.zst", "k3s-arm64", "sha256sum-arm64.txt"]   # the Pis' architecture only
    archives = initramfs_archives((tree / "initrd.img").read_bytes())
    initrd = "".join(subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True,
                                    check=True).stdout.decode() for archive in archives)
    # NFS root support; the Pi 4's NIC (BCMGENET, built as genet.ko); QEMU virt's NIC; and for the
    # SD-card image (image/sdcard.py) a local ext4 root on the Pi 4's SD slot or QEMU's virtio disk.
    for path in ("scripts/nfs", "fs/nfs/nfs.ko", "fs/nfs/nfsv3.ko", "broadcom/genet/genet.ko",
                 "drivers/net/virtio_net.ko", "fs/overlayfs/overlay.ko",
                 "scripts/nfs-bottom/rackboot-overlay",
                 "scripts/local", "fs/ext4/ext4.ko", "drivers/mmc/host/sdhci-iproc.ko",
                 "drivers/block/virtio_blk.ko", "drivers/usb/storage/usb-storage.ko"):
        assert path in initrd, path
    # The SD card's block driver is built into Debian's arm64 kernel, not a module.
    builtin = "".join(subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "*/modules.builtin"], input=archive,
                                     capture_output=True, check=True).stdout.decode() for archive in archives)
    assert "kernel/drivers/mmc/core/mmc_block.ko" in builtin.split()
    check_conformance(profile, tree, tmp_path)


def test_pi_root_mount_unit_is_named_and_read_as_systemd_does(tmp_path):
    """The jumphost's mount of the Pis' root: its name is systemd's for its
    Where=, systemd-analyze accepts it, and enabling it in an image tree puts
    it under local-fs.target, before the NFS server and the agent."""
    from firstboot import serve
    from firstboot.layout import MACHINE
    escaped = subprocess.run(["systemd-escape", "--path", "--suffix=mount", str(MACHINE.pi_root)],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert escaped == serve.PI_ROOT_UNIT
    unit = tmp_path / serve.PI_ROOT_UNIT
    unit.write_text(netboot.PI_ROOT_MOUNT_UNIT)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert f"What={MACHINE.pi_root_image}\n" in netboot.PI_ROOT_MOUNT_UNIT
    assert "Type=squashfs\n" in netboot.PI_ROOT_MOUNT_UNIT
    assert "ro" in netboot.PI_ROOT_MOUNT_UNIT.split("Options=")[1].split("\n")[0].split(",")
    assert "Before=nfs-server.service rackboot-firstboot.service\n" in netboot.PI_ROOT_MOUNT_UNIT
    tree = tmp_path / "tree"
    (tree / "etc/systemd/system").mkdir(parents=True)
    netboot.install_pi_root_mount(tree)
    link = tree / "etc/systemd/system/local-fs.target.wants" / serve.PI_ROOT_UNIT
    assert os.readlink(link) == f"/etc/systemd/system/{serve.PI_ROOT_UNIT}"
    assert (tree / netboot.PI_ROOT_IN_IMAGE).is_dir() and not list((tree / netboot.PI_ROOT_IN_IMAGE).iterdir())


@pytest.mark.machine     # root: owners, a mount namespace
def test_squashfs_keeps_what_the_pis_root_needs(tmp_path):
    """mksquashfs as the image runs it: owners, modes (setuid too), hard and
    symbolic links, extended attributes and empty files come back as they
    were when the kernel mounts it (in a mount namespace of this test's); the
    same tree gives the same bytes."""
    if os.geteuid() != 0:
        pytest.skip("owners and mounts need root")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chown(tree / "etc/shadow", 0, 42)
    os.chmod(tree / "etc/shadow", 0o640)
    (tree / "usr/bin/su").write_bytes(b"\x7fELF")
    os.chmod(tree / "usr/bin/su", 0o4755)
    os.link(tree / "usr/bin/su", tree / "usr/bin/su-again")
    (tree / "usr/bin/sh").symlink_to("dash")
    (tree / "etc/machine-id").write_text("")
    os.setxattr(tree / "usr/bin/su", "user.rackboot", b"kept")
    first, second = tmp_path / "a.squashfs", tmp_path / "b.squashfs"
    netboot.make_squashfs(tree, first)
    netboot.make_squashfs(tree, second)
    assert first.read_bytes() == second.read_bytes()
    assert (first.stat().st_mode & 0o777) == 0o644
    script = (f"mkdir -p {tmp_path}/mnt && mount -t squashfs -o ro,loop {first} {tmp_path}/mnt && "
              f"cd {tmp_path}/mnt && stat -c '%n %u %g %a %h %s %F' etc/shadow usr/bin/su usr/bin/sh etc/machine-id && "
              f"{sys.executable} -c \"import os; print(os.getxattr('usr/bin/su', 'user.rackboot').decode())\" && "
              f"readlink usr/bin/sh")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["etc/shadow 0 42 640 1 26 regular file", "usr/bin/su 0 0 4755 2 4 regular file",
                         "usr/bin/sh 0 0 777 1 4 symbolic link", "etc/machine-id 0 0 644 1 0 regular empty file"]
    assert lines[4:] == ["kept", "dash"]
