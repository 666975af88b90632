"""VM tier: the virtual rack (tests/lib/vm.py's VirtualRack). The example rack's
jumphost image boots in QEMU (x86-64, UEFI, TCG), a fresh flash with its seed
that must reach rack ready in one boot (cloud-init clean, no failed unit,
identified from its seed, the token fetched once from the Secret Manager
double and never on its console), and two Pis boot as arm64
`virt` machines on one layer-2 segment with it: every NIC is a port of a
learning switch (tests/lib/rack_switch.py, UDP cables on the host's loopback),
and the rack router (DHCP, the host at the router's address, forwarded
ports) is QEMU's user network in a QEMU of its own on another port.

The jumphost exports the Pis' root from a filesystem of its own: the
image's squashfs, mounted read-only, on another device than its root.
Each Pi boots the kernel, initramfs and cmdline.txt of the jumphost image's
TFTP tree for the rack (QEMU's raspi4b has no network, so the test hands the
Pi what its bootloader would fetch; tests/test_netboot.py checks that
dnsmasq serves exactly these files), gets its address by DHCP, mounts the
jumphost's NFS root read-only under a tmpfs overlay, finds its name by its
MAC, fetches the agent token from the jumphost's join service and joins the
cluster (k3s stand-in, or real k3s with RACKBOOT_K3S_BUNDLE). Then one Pi is
power-cycled: it comes back with nothing of its own (all in RAM) and rejoins
as the same node.

Then the second Pi is replaced by a new board (new MAC) that boots from an
SD card (tests/conftest.py's replacement_sdcard: `build.py sdcard` after its
profile entry was changed). The card is a 4 GiB copy of the image, as a card
larger than the image is; virt has no SD controller, so it is a virtio disk,
and the firmware's part (kernel, initramfs, cmdline.txt from the FAT boot
partition) is played by the test. The new board must join as the same node,
grow its root to fill the card, and keep k3s's state on it.

Then a third Pi is added by a push to the running jumphost (`build.py push`
over ssh, as an operator does): the jumphost takes the new bundle without
rebooting, and the new Pi, in none of the image's bundles, netboots, finds
itself in the bundle its jumphost's join service serves, and joins. A second
push takes it out again (it was powered off first): its Node and TFTP
directory go.

Last, the jumphost is swapped under its running Pis (tests/lib/vm_swap.py):
its QEMU killed, a fresh copy of the same image booted with the same seed,
the netbooted Pi and the SD-card Pi left running. Both are Ready nodes of the
new cluster again within 10 minutes without a reboot (their watcher restarts
k3s-agent: the example has no k3s.ca, so the new jumphost's CA is new), the
rack's YAML is applied again, and the NFS root serves on.

On the swapped-in jumphost, k3s is upgraded in place (tests/lib/vm_upgrade.py):
the next minor pushed with the rack's bundle; the jumphost's server upgrades
keeping its datastore, and both running Pis follow (their watcher runs their
agent again, which fetches the served version from the join service): every
Node Ready on the new version, the same Nodes and objects, nothing rebooted.
"""

import json
import subprocess

import pytest

from firstboot import join
from tests.conftest import EXAMPLE_PROFILE, REPLACEMENT_PI
from tests.lib import vm_push, vm_swap, vm_upgrade
from tests.lib.vm import (ALL_DONE, ARTIFACTS, PiVM, VirtualRack, debugfs, ext4_header, extract_partition,
                          file_type, partitions, sdcard_boot_files)

pytestmark = pytest.mark.vm

TOKEN = b"rackboot-virtual-rack-token-never-logged"


CARD_BYTES = 4 << 30
ADDED_PI = {"name": "pi-example-03", "model": "pi4", "serial": "0a1b2c03", "mac": "dc:a6:32:00:00:03"}
PUSHED = 100000          # the pushed bundles' revisions: above the image's (its git commit count)


def test_virtual_rack_joins_a_power_cycled_pi_rejoins_and_a_replacement_boots_from_sd(
        example_image, replacement_sdcard, tmp_path):
    profile, out, _ = example_image
    rack = VirtualRack(profile, out / "jumphost.img", tmp_path, TOKEN)
    assert f"nfsroot={profile.jumphost.address}:{profile.netboot.nfs_root}" in rack.pi_cmdline
    card = tmp_path / "card.img"
    subprocess.run(["cp", "--sparse=always", str(replacement_sdcard[1] / "pi-sdcard.img"), str(card)], check=True)
    image_bytes = card.stat().st_size
    subprocess.run(["truncate", "-s", str(CARD_BYTES), str(card)], check=True)
    card_boot = sdcard_boot_files(card, tmp_path / "card")
    assert "root=LABEL=rackboot-pi" in card_boot.cmdline
    replacement = PiVM(f"rack-{REPLACEMENT_PI['name']}-sd", card_boot, REPLACEMENT_PI["mac"],
                       rack.switch.plug(), card=card)
    added = PiVM(f"rack-{ADDED_PI['name']}", rack.pi_boot, ADDED_PI["mac"], rack.switch.plug())
    seen = {}

    def add_and_remove_a_pi_by_push():
        seen["boot_id"] = rack.ssh("cat", "/proc/sys/kernel/random/boot_id")
        host, config = vm_push.ssh_config(rack, tmp_path / "ssh_config")
        for revision, extra, name in ((PUSHED, [ADDED_PI], "add"), (PUSHED + 1, [], "remove")):
            pushed = vm_push.push(vm_push.profiles_with(EXAMPLE_PROFILE, tmp_path / name, extra), host, config,
                                  revision)
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
            seen[f"push_{name}"] = pushed.stdout
            seen[f"status_{name}"] = vm_push.agent_done(rack, revision)
            if name == "add":
                seen["added_tftp"] = rack.ssh("cat", f"/srv/rackboot/tftp/{ADDED_PI['serial']}/cmdline.txt")
                added.power_on()
                try:
                    seen["added"] = added.report()
                    seen["after_add"] = rack.cluster()
                finally:
                    added.power_off()
        seen["after_remove"] = vm_push.node_gone(rack, ADDED_PI["name"])
        seen["tftp_after_remove"] = rack.ssh("ls", "/srv/rackboot/tftp/")
        seen["boot_id_after"] = rack.ssh("cat", "/proc/sys/kernel/random/boot_id")

    def with_jumphost_ready(report):
        seen["token_reads_at_ready"] = list(rack.secret_manager.calls)
        assert report["steps"] == ALL_DONE, report["errors"]
        seen["jumphost"] = report
        # What the jumphost exports to the Pis: its mount, and the device numbers of it and of /.
        seen["pi_root_mount"] = rack.ssh("findmnt", "-n", "-J", "-o", "SOURCE,FSTYPE,OPTIONS,FSROOT",
                                         "--mountpoint", "/srv/rackboot/pi-root")
        seen["st_dev"] = rack.ssh("stat", "-c", "%d:%n", "/", "/srv/rackboot/pi-root")
        for vm in rack.pis:
            vm.power_on()
        seen["pis"] = [vm.report() for vm in rack.pis]
        seen["joined"] = rack.cluster()
        # Power cut on the first Pi: it comes back with an empty overlay and rejoins.
        rack.pis[0].power_off()
        rack.pis[0].power_on()
        seen["rebooted"] = rack.pis[0].report()
        seen["after_reboot"] = rack.cluster()
        seen["exports"] = rack.ssh("sudo", "exportfs", "-v")
        # The second Pi dies for good; a new board with its name boots from a card.
        rack.pis[1].power_off()
        replacement.power_on()
        try:
            seen["replacement"] = replacement.report()
            seen["after_replacement"] = rack.cluster()
            # Its power cut: it comes back with what it wrote to its card.
            replacement.power_off()
            seen["replacement_console"] = replacement.files.serial_log.read_bytes()
            replacement.power_on()
            seen["replacement_rebooted"] = replacement.report()
        finally:
            replacement.power_off()
        add_and_remove_a_pi_by_push()
        seen["token_reads_before_swap"] = list(rack.secret_manager.calls)
        replacement.power_on()       # its third boot: the two Pis the swap leaves running
        try:
            seen["before_swap"] = replacement.report()
            running = {profile.pis[0].name: rack.pis[0], REPLACEMENT_PI["name"]: replacement}
            seen["swap"] = vm_swap.swap_jumphost(rack, running, then=lambda: vm_upgrade.upgrade_k3s(
                rack, running, EXAMPLE_PROFILE, tmp_path / "upgrade", PUSHED + 2))
        finally:
            replacement.power_off()

    try:
        rack.run(with_jumphost_ready)
    finally:
        rack.close()
    assert rack.router_ran_until_stopped()

    # The jumphost: a fresh flash of the image, with its seed, at rack ready in one uninterrupted first boot.
    jumphost, console = seen["jumphost"], ARTIFACTS / "rack-jumphost" / "serial.log"
    assert jumphost["identity"] == {"rack": "example", "role": "jumphost", "node": "jumphost-example",
                                    "source": "seed"}, console
    assert jumphost["cloud_init"]["status"] == "done" and jumphost["cloud_init"]["errors"] == [], \
        (jumphost["cloud_init"], console)
    assert jumphost["failed_units"] == [], console
    assert len(jumphost["ssh_host_keys"]) == 3, console
    assert TOKEN not in console.read_bytes()
    token = "projects/rackboot-example/secrets/k3s-node-token/versions/latest"
    assert seen["token_reads_at_ready"] == [token]                # once, at the first boot
    # Each agent run reads it again (a rotated token is taken so): one per push, then the
    # swapped-in jumphost's first boot, then its run after the k3s upgrade's push.
    assert seen["token_reads_before_swap"] == [token] * 3
    upgraded = "skipped" not in seen["swap"]["then"]
    assert rack.secret_manager.calls == [token] * (4 + upgraded)
    pis = profile.pis[:2]
    for pi, report in zip(pis, seen["pis"]):
        assert report["identity"] == {"rack": "example", "role": "pi", "node": pi.name, "source": "MAC"}, report
        assert report["steps"] == ALL_DONE, report["errors"]
        assert report["failed_units"] == []
        # rackboot-pi-access set its hostname (the shared root's /etc/hostname says rackboot-pi)
        # and installed the one host key its jumphost derived for it.
        assert report["hostname"] == pi.name, report
        assert list(report["ssh_host_keys"]) == ["ssh_host_ed25519_key.pub"], report
    assert seen["pis"][0]["ssh_host_keys"] != seen["pis"][1]["ssh_host_keys"]
    for vm in rack.pis:
        console = vm.files.serial_log.read_bytes()
        assert b"rackboot: root is the NFS root with a tmpfs overlay" in console
        assert TOKEN not in console and join.agent_token(TOKEN, "example") not in console
    assert "/srv/rackboot/pi-root" in seen["exports"] and "192.168.1.0/24" in seen["exports"]
    # The export is a filesystem of its own: the image's squashfs, whole and read-only, on another
    # device than the jumphost's root; exported only while mounted, under a fixed fsid.
    [mount] = json.loads(seen["pi_root_mount"])["filesystems"]
    assert mount["fstype"] == "squashfs" and mount["fsroot"] == "/", mount
    assert mount["source"].startswith("/dev/loop") and "ro" in mount["options"].split(","), mount
    st_dev = {name: int(dev) for dev, name in (line.split(":", 1) for line in seen["st_dev"].splitlines())}
    print(f"jumphost st_dev: / {st_dev['/']}, /srv/rackboot/pi-root {st_dev['/srv/rackboot/pi-root']}")
    assert st_dev["/srv/rackboot/pi-root"] != st_dev["/"], st_dev
    assert "mountpoint" in seen["exports"] and "fsid=44155317-85df-410d-b5a3-07adf3f58a6d" in seen["exports"]
    joined = seen["joined"]["nodes"]
    assert set(joined) == {"jumphost-example", *(pi.name for pi in pis)}
    first = joined[pis[0].name]
    assert first["rackboot.dev/rack"] == "example" and first["rackboot.dev/role"] == "pi"
    assert first["rackboot.dev/model"] == "pi4" and first["example.dev/device-pool"] == "android"
    assert "example.dev/device-pool" not in joined[pis[1].name]
    # The power-cycled Pi is the same node, with the same password, and no other appeared.
    assert seen["rebooted"]["identity"]["node"] == pis[0].name
    assert seen["rebooted"]["hostname"] == pis[0].name
    assert seen["rebooted"]["steps"] == ALL_DONE, seen["rebooted"]["errors"]
    assert seen["after_reboot"]["nodes"].keys() == joined.keys()
    assert seen["after_reboot"]["passwords"] == seen["joined"]["passwords"]

    # The replacement: the second Pi's name from its card, the same node and password.
    assert seen["replacement"]["identity"] == {"rack": "example", "role": "pi", "node": REPLACEMENT_PI["name"],
                                               "source": "MAC"}, seen["replacement"]
    assert seen["replacement"]["steps"] == ALL_DONE, seen["replacement"]["errors"]
    assert seen["replacement"]["failed_units"] == []
    assert seen["after_replacement"]["nodes"] == joined
    assert seen["after_replacement"]["passwords"] == seen["joined"]["passwords"]
    rebooted = seen["replacement_rebooted"]
    assert rebooted["identity"]["node"] == REPLACEMENT_PI["name"]
    assert rebooted["steps"] == ALL_DONE, rebooted["errors"]
    assert rebooted["failed_units"] == []          # grow-root included: nothing left to grow
    # Host keys: a netbooted Pi's came back the same after its power cut (its jumphost hands it
    # the same key), and the replacement board, with the dead Pi's name, presents the dead Pi's key.
    assert seen["pis"][0]["ssh_host_keys"] == seen["rebooted"]["ssh_host_keys"]
    assert seen["replacement"]["ssh_host_keys"] == seen["pis"][1]["ssh_host_keys"]
    assert rebooted["ssh_host_keys"] == seen["replacement"]["ssh_host_keys"]
    assert seen["replacement"]["hostname"] == rebooted["hostname"] == REPLACEMENT_PI["name"]
    for console in (seen["replacement_console"], replacement.files.serial_log.read_bytes()):
        assert b"rackboot: root is the NFS root" not in console
        assert TOKEN not in console and join.agent_token(TOKEN, "example") not in console
    assert b"resized filesystem" in seen["replacement_console"]
    assert b"already fills /dev/vda" in replacement.files.serial_log.read_bytes()
    # The root partition grew to the end of the card, and its filesystem with it.
    table = partitions(card)
    root = table["partitions"][1]
    assert image_bytes < CARD_BYTES
    assert (root["start"] + root["size"]) * 512 > CARD_BYTES - (4 << 20)
    rootfs = extract_partition(card, 2, tmp_path / "card-root.ext4")
    # The Pi was powered off, not shut down: replay the journal (on the copy) first.
    fsck = subprocess.run(["e2fsck", "-f", "-y", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    header = ext4_header(rootfs)
    blocks = int(header["Block count"]) * int(header["Block size"])
    assert blocks > root["size"] * 512 - (4 << 20), header
    # What the Pi wrote stayed on its card: the agent's status and k3s's state (not a tmpfs).
    # (Power cuts: only what was written some seconds before the last one is sure to be there.)
    status = json.loads(debugfs(rootfs, "cat /var/lib/rackboot/status.json"))
    assert status["steps"]["identify"]["result"]["node"] == REPLACEMENT_PI["name"], status
    assert file_type(rootfs, "/var/lib/rancher/k3s/agent/images") == "directory"
    assert file_type(rootfs, "/etc/rancher/node/password") == "regular"

    # A Pi added by a push: the jumphost took the bundle without rebooting (the same boot id
    # throughout), the join service restarted to serve it, and the Pi found itself in it.
    assert seen["boot_id"] == seen["boot_id_after"]
    assert f"installed /var/lib/rackboot/bundles/example/{PUSHED}" in seen["push_add"], seen["push_add"]
    for name in ("add", "remove"):
        outcomes = {step: record["outcome"] for step, record in seen[f"status_{name}"]["steps"].items()}
        assert outcomes == {**ALL_DONE, "report": "done"}, seen[f"status_{name}"]
    # The TFTP root now links into the pushed bundle; no DHCP line (proxy DHCP: the example's Pis have no address).
    assert {"bundle", "tftp-root"} <= set(seen["status_add"]["steps"]["serve"]["result"]["changed"])
    assert "rackboot.rack=example" in seen["added_tftp"]
    assert seen["added"]["identity"] == {"rack": "example", "role": "pi", "node": ADDED_PI["name"],
                                         "source": "MAC"}, seen["added"]
    assert seen["added"]["steps"] == ALL_DONE, seen["added"]["errors"]
    assert seen["added"]["hostname"] == ADDED_PI["name"] and seen["added"]["failed_units"] == []
    assert seen["after_add"]["nodes"][ADDED_PI["name"]]["rackboot.dev/rack"] == "example"
    added_console = added.files.serial_log.read_bytes()
    assert TOKEN not in added_console and join.agent_token(TOKEN, "example") not in added_console
    # Taken out: its Node and TFTP directory went, and nothing else.
    assert seen["status_remove"]["steps"]["apply"]["result"]["nodes_removed"] == [ADDED_PI["name"]]
    assert set(seen["after_remove"]["nodes"]) == set(seen["after_add"]["nodes"]) - {ADDED_PI["name"]}
    assert ADDED_PI["serial"] not in seen["tftp_after_remove"].split()


    # The jumphost swapped under the two running Pis: both Ready in the new cluster (within
    # vm_swap's 10 minutes), the same QEMUs and boot ids (nothing rebooted), each Pi's watcher
    # restarted its k3s-agent once it saw the new CA, the rack's YAML applied again, the NFS
    # root exported again and the netbooted Pi on it.
    swap = seen["swap"]
    print(f"jumphost swap: both Pis Ready {swap['seconds']} s after the old jumphost was killed")
    assert seen["before_swap"]["steps"] == ALL_DONE, seen["before_swap"]["errors"]
    assert swap["report"]["steps"] == ALL_DONE, swap["report"]["errors"]
    assert swap["pis_running"] == [True, True]
    for name in (pis[0].name, REPLACEMENT_PI["name"]):
        assert swap["after"][name][0] == "True", swap["after"]
        assert swap["after"][name][1] == swap["before"][name][1], (name, swap["before"], swap["after"])
        assert any("serves another CA than the agent pinned" in line and "restarting k3s-agent" in line
                   for line in swap["pi_watch"][name]), swap["pi_watch"]
    assert "/srv/rackboot/pi-root" in swap["exports"] and "fsid=44155317-85df-410d-b5a3-07adf3f58a6d" in swap["exports"]
    assert swap["nfs_peers"].strip(), swap                       # the netbooted Pi's NFS client came back

    # k3s upgraded in place on the swapped-in jumphost, both running Pis following.
    upgrade = swap["then"]
    if "skipped" in upgrade:
        print(f"k3s upgrade in place: skipped ({upgrade['skipped']})")
        return
    version = upgrade["version"]
    assert f"k3s {version}: installed in /var/lib/rackboot/k3s" in upgrade["pushed"], upgrade["pushed"]
    assert upgrade["status"]["steps"]["k3s"]["outcome"] == "done", upgrade["status"]
    k3s_result = upgrade["status"]["steps"]["k3s"]["result"]
    assert k3s_result["version"] == version and "binary" in k3s_result["changed"], k3s_result
    before, after = upgrade["before"], upgrade["after"]
    assert set(after) == set(before) == {"jumphost-example", pis[0].name, REPLACEMENT_PI["name"]}, (before, after)
    for name in before:
        assert before[name][1] != version and after[name][:2] == ("True", version), (name, before, after)
        assert after[name][2:] == before[name][2:], (name, before, after)    # same Node (uid), same boot
    assert upgrade["kept"][0] == upgrade["kept"][1]                      # the datastore kept what it had
    assert upgrade["pis_running"] == [True, True]
    for name, lines in upgrade["pi_watch"].items():
        assert any(f"the jumphost's k3s runs {version}" in line and "restarting rackboot-firstboot.service" in line
                   for line in lines), (name, upgrade["pi_watch"])
