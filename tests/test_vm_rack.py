"""VM tier: the virtual rack (tests/vm.py's VirtualRack). The example rack's
jumphost image boots in QEMU (x86-64, UEFI, TCG) and two Pis boot as arm64
`virt` machines on one layer-2 segment with it: every NIC is a port of a
learning switch (tests/rack_switch.py, UDP cables on the host's loopback),
and the rack router (DHCP, the host at the router's address, forwarded
ports) is QEMU's user network in a QEMU of its own on another port.

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

import pytest

from firstboot import join
from tests.vm import ALL_DONE, VirtualRack

pytestmark = pytest.mark.vm

TOKEN = b"rackboot-virtual-rack-token-never-logged"


def test_virtual_rack_joins_and_a_power_cycled_pi_rejoins(example_image, tmp_path):
    profile, out, _ = example_image
    rack = VirtualRack(profile, out / "jumphost.img", tmp_path, TOKEN)
    assert f"nfsroot={profile.jumphost.address}:{profile.netboot.nfs_root}" in rack.pi_cmdline
    seen = {}

    def with_jumphost_ready(report):
        assert report["steps"] == ALL_DONE, report["errors"]
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

    try:
        rack.run(with_jumphost_ready)
    finally:
        rack.close()
    assert rack.router_ran_until_stopped()

    pis = profile.pis[:2]
    for pi, report in zip(pis, seen["pis"]):
        assert report["identity"] == {"rack": "example", "role": "pi", "node": pi.name, "source": "MAC"}, report
        assert report["steps"] == ALL_DONE, report["errors"]
        assert report["failed_units"] == []
    for vm in rack.pis:
        console = vm.files.serial_log.read_bytes()
        assert b"rackboot: root is the NFS root with a tmpfs overlay" in console
        assert TOKEN not in console and join.agent_token(TOKEN) not in console
    assert "/srv/rackboot/pi-root" in seen["exports"] and "192.168.1.0/24" in seen["exports"]
    joined = seen["joined"]["nodes"]
    assert set(joined) == {"jumphost-example", *(pi.name for pi in pis)}
    first = joined[pis[0].name]
    assert first["rackboot.dev/rack"] == "example" and first["rackboot.dev/role"] == "pi"
    assert first["rackboot.dev/model"] == "pi4" and first["example.dev/device-pool"] == "android"
    assert "example.dev/device-pool" not in joined[pis[1].name]
    # The power-cycled Pi is the same node, with the same password, and no other appeared.
    assert seen["rebooted"]["identity"]["node"] == pis[0].name
    assert seen["rebooted"]["steps"] == ALL_DONE, seen["rebooted"]["errors"]
    assert seen["after_reboot"]["nodes"].keys() == joined.keys()
    assert seen["after_reboot"]["passwords"] == seen["joined"]["passwords"]
