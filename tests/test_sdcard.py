"""The Pi's SD-card image (image/sdcard.py, `build.py sdcard`).

Bad input is refused before anything is built. The vm tier builds a real
card (Debian's arm64 packages, the stand-in or real k3s bundle) for a
replaced Pi, as an operator would after changing its profile entry, and
reads it back: the partition table the Pi 4's boot ROM needs, the boot
partition's files, the root's files and enabled units, no machine state.
tests/test_vm_rack.py boots the same card in the virtual rack.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPLACEMENT_PI
from tests.lib.vm import debugfs, ext4_header, extract_partition, fat_files, file_type, partitions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def profiles(tmp_path):
    copy = tmp_path / "rack-profiles"
    shutil.copytree(REPO / "rack-profiles", copy)
    (copy / "nopis.yaml").write_text("rack: nopis\njumphost:\n  hostname: jh-nopis\n")
    return copy


def test_rack_without_pis_is_refused(build, profiles, tmp_path):
    result = build("sdcard", str(profiles / "nopis.yaml"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{profiles / 'nopis.yaml'}: rack nopis has no Pis" in result.stderr
    assert not (tmp_path / "out").exists()


def test_one_rack_per_card(build, profiles, tmp_path):
    result = build("sdcard", str(profiles / "nopis.yaml"), str(profiles / "example.yaml"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "sdcard takes one rack; got 2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_broken_profile_is_refused(build, profiles, tmp_path):
    (profiles / "example.yaml").write_text((profiles / "example.yaml").read_text().replace(
        "mac: dc:a6:32:00:00:01", "mac: not-a-mac"))
    result = build("sdcard", str(profiles / "example.yaml"), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "example.yaml" in result.stderr and "mac" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_names_the_outputs(build):
    result = build("sdcard", "--help")
    assert result.returncode == 0
    for text in ("pi-sdcard.img", ".sha256", ".bmap", "--k3s-bundle", "--compress"):
        assert text in result.stdout


@pytest.mark.vm
def test_card_layout_and_contents(replacement_sdcard, tmp_path):
    profile, out, stdout = replacement_sdcard
    card = out / "pi-sdcard.img"
    assert stdout.split() == [str(card), str(card) + ".sha256", str(card) + ".bmap"]
    assert sorted(p.name for p in out.iterdir()) == [".rackboot-output",     # image/output.py's marker
                                                     "pi-sdcard.img", "pi-sdcard.img.bmap", "pi-sdcard.img.sha256"]
    subprocess.run(["sha256sum", "--check", "--quiet", "pi-sdcard.img.sha256"], cwd=out, check=True)

    # What the Pi 4's boot ROM reads: MBR, the FAT32 (LBA) boot partition first and active.
    table = partitions(card)
    assert table["label"] == "dos"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True
    assert root["type"] == "83"
    assert boot["start"] % 8192 == 0 and root["start"] % 8192 == 0     # 4 MiB: SD erase blocks

    vfat = extract_partition(card, 1, tmp_path / "boot.vfat")
    info = subprocess.run(["minfo", "-i", str(vfat), "::"], capture_output=True, text=True, check=True).stdout
    assert "RPI-BOOT" in info and "FAT32" in info
    listing = subprocess.run(["mdir", "-b", "-i", str(vfat), "::"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in ("start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "vmlinuz", "initrd.img", "config.txt",
                 "cmdline.txt"):
        assert f"::/{name}" in listing, name
    files = fat_files(vfat, ["config.txt", "cmdline.txt"], tmp_path / "boot")
    config = files["config.txt"].read_text()
    assert "arm_64bit=1" in config and "kernel=vmlinuz" in config and "initramfs initrd.img followkernel" in config
    cmdline = files["cmdline.txt"].read_text().split()
    assert "root=LABEL=rackboot-pi" in cmdline and "rw" in cmdline and "rackboot.rack=example" in cmdline
    assert "cgroup_enable=memory" in cmdline and not any(w.startswith("nfsroot=") for w in cmdline)

    rootfs = extract_partition(card, 2, tmp_path / "root.ext4")
    assert ext4_header(rootfs)["Filesystem volume name"] == "rackboot-pi"

    def cat(path):
        return debugfs(rootfs, f"cat {path}")

    def kind(path):
        return file_type(rootfs, path)

    assert "LABEL=rackboot-pi / ext4" in cat("/etc/fstab")
    assert "DHCP=ipv4" in cat("/etc/systemd/network/20-rackboot-wired.network")
    assert "growpart" in cat("/usr/lib/rackboot/grow-root")
    assert "Mode:  0755" in debugfs(rootfs, "stat /usr/lib/rackboot/grow-root")
    for wants, unit in (("sysinit.target.wants", "rackboot-grow-root.service"),
                        ("multi-user.target.wants", "systemd-networkd.service"),
                        ("multi-user.target.wants", "rackboot-firstboot.service")):
        assert kind(f"/etc/systemd/system/{wants}/{unit}") == "symlink", unit
    for tool in ("/usr/bin/growpart", "/usr/sbin/resize2fs", "/usr/sbin/sfdisk"):
        assert kind(tool) == "regular", tool
    # The tmpfs for k3s's state is a netbooted Pi's: here it stays on the card.
    assert "ConditionKernelCommandLine=root=/dev/nfs" in cat("/etc/systemd/system/var-lib-rancher.mount")
    # The card's profile has the new board; the agent and k3s's arm64 files are there.
    card_profile = cat("/usr/lib/rackboot/rack-profiles/example.yaml")
    assert REPLACEMENT_PI["mac"] in card_profile and "dc:a6:32:00:00:02" not in card_profile
    assert kind("/usr/lib/rackboot/firstboot/agent.py") == "regular"
    assert kind(f"/usr/lib/rackboot/k3s/{profile.k3s.version}/k3s-arm64") == "regular"
    # No machine state and no secret: each card makes its own, the token comes from the jumphost.
    assert cat("/etc/machine-id") == ""
    assert "ssh_host_" not in debugfs(rootfs, "ls /etc/ssh")
    assert kind("/etc/rancher/k3s/token") is None and kind("/var/lib/rackboot") is None
    os.unlink(rootfs)
