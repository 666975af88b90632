"""Identify: the rules by which a booted machine finds its rack, on
network views and inputs built here (the VM tier checks it on a real boot)."""

import ipaddress
import json

import pytest

from firstboot import identify
from firstboot.errors import BadInput, RackbootError
from firstboot.identify import NetworkView
from firstboot.profile import load_profiles
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
RACKS = load_profiles([REPO / "rack-profiles"])
A = ipaddress.IPv4Address


def view(macs=(), addresses=(), gateway=None, gateway_mac=None):
    return lambda: NetworkView(frozenset(macs), frozenset(A(a) for a in addresses),
                               A(gateway) if gateway else None, gateway_mac)


def never_read():
    raise AssertionError("the network must not be consulted when the command line or seed names the rack")


def test_command_line_wins_over_seed():
    got = identify.identify_jumphost(RACKS, "quiet rackboot.rack=skolo-rack4 ro", "example", never_read)
    assert (got.rack, got.source, got.node) == ("skolo-rack4", "kernel command line", "skolo-rack4-jumphost")


def test_seed_names_rack():
    got = identify.identify_jumphost(RACKS, "quiet", "example", never_read)
    assert (got.rack, got.source) == ("example", "seed")


def test_unknown_rack_on_command_line_is_bad_input():
    with pytest.raises(BadInput, match="rack 'rack9', which is not among this image's racks"):
        identify.identify_jumphost(RACKS, "rackboot.rack=rack9", None, never_read)


def test_explicit_signals_outrank_the_subnet_rule():
    """skolo-rack4 and example share 192.168.1.0/24; rack4's jumphost MAC and
    router MAC single it out, though example's subnet rule also fits."""
    got = identify.identify_jumphost(RACKS, "", None, view(
        macs={"3c:ec:ef:10:44:02"}, addresses={"192.168.1.8"}, gateway="192.168.1.1",
        gateway_mac="e4:5f:01:aa:04:01"))
    assert (got.rack, got.source) == ("skolo-rack4", "network")


def test_router_mac_must_match_when_given():
    """skolo-rack4 names its router's MAC: a jumphost behind another router
    with the same subnet is not skolo-rack4; example (subnet rule) matches."""
    got = identify.identify_jumphost(RACKS, "", None, view(macs={"52:54:00:12:34:56"}, addresses={"192.168.1.8"},
                                                              gateway="192.168.1.1", gateway_mac="aa:bb:cc:00:00:01"))
    assert got.rack == "example"


def test_two_matching_racks_is_an_error_not_a_guess():
    twins = load_profiles([REPO / "tests/profiles/twins"])
    with pytest.raises(RackbootError) as caught:
        identify.identify_jumphost(twins, "", None, view(addresses={"10.1.0.8"}, gateway="10.1.0.1"))
    assert "racks twin-a, twin-b all match" in str(caught.value)
    assert "rackboot.rack=NAME" in caught.value.hint


def test_no_matching_rack_says_what_it_saw():
    with pytest.raises(RackbootError, match=r"no rack matches .*addresses 172\.16\.0\.9; gateway 172\.16\.0\.1"):
        identify.identify_jumphost(RACKS, "", None, view(addresses={"172.16.0.9"}, gateway="172.16.0.1"))


def test_pi_by_serial_then_mac():
    assert identify.identify_pi(RACKS, "6a3f0003", frozenset()).node == "skia-rpi-003"
    got = identify.identify_pi(RACKS, None, frozenset({"dc:a6:32:00:00:02"}))
    assert (got.rack, got.node, got.source) == ("example", "pi-example-02", "MAC")


def test_unknown_pi_is_an_error():
    with pytest.raises(RackbootError, match=r"this Pi \(serial 0badf00d"):
        identify.identify_pi(RACKS, "0badf00d", frozenset())


def test_pi_serial_from_device_tree_and_cpuinfo(tmp_path):
    (tmp_path / "serial-number").write_bytes(b"10000000a1b2c3d4\0")
    (tmp_path / "cpuinfo").write_text("Serial\t\t: 00000000deadbeef\n")
    assert identify.pi_serial(tmp_path / "cpuinfo", tmp_path / "serial-number") == "a1b2c3d4"
    assert identify.pi_serial(tmp_path / "cpuinfo", tmp_path / "absent") == "deadbeef"


def test_seed_rack_read_from_cloud_init_instance_data(tmp_path):
    data = tmp_path / "instance-data.json"
    data.write_text(json.dumps({"ds": {"meta_data": {"rackboot-rack": "example", "instance-id": "x"}}}))
    assert identify.rack_from_seed(data) == "example"
    assert identify.rack_from_seed(tmp_path / "missing.json") is None


def test_identity_carries_the_profile_it_found():
    """identify's answer is the rack's profile too: no step looks it up again."""
    got = identify.identify_jumphost(RACKS, "rackboot.rack=skolo-rack4", None, never_read)
    assert got.profile is next(p for p in RACKS if p.rack == "skolo-rack4")
    pi = identify.identify_pi(RACKS, "6a3f0003", frozenset())
    assert pi.profile is next(p for p in RACKS if p.rack == "skolo-rack4")
    assert "profile" not in pi.to_json() and pi.to_json()["role"] == "pi"


def test_pi_command_line_rack_narrows_and_cross_checks():
    """A Pi's boot files name their rack (rackboot.rack=): its own rack's files
    identify it as before; another rack's files fail naming both racks."""
    got = identify.identify_pi(RACKS, "6a3f0003", frozenset(), cmdline_rack="skolo-rack4")
    assert (got.rack, got.node, got.source) == ("skolo-rack4", "skia-rpi-003", "serial")
    with pytest.raises(RackbootError, match=r"booted rack example's boot files .* it is skolo-rack4/skia-rpi-003"):
        identify.identify_pi(RACKS, "6a3f0003", frozenset(), cmdline_rack="example")
    with pytest.raises(RackbootError, match=r"booted rack example's boot files .*not one of its Pis$"):
        identify.identify_pi(RACKS, "0badf00d", frozenset(), cmdline_rack="example")
    with pytest.raises(BadInput, match="rack 'rack9', which is not among this image's racks"):
        identify.identify_pi(RACKS, "6a3f0003", frozenset(), cmdline_rack="rack9")


def test_pi_rack_on_the_command_line_is_what_its_boot_files_render():
    """The rack the agent reads is the one the TFTP and SD-card cmdline.txt name."""
    from image import render
    [example] = [p for p in RACKS if p.rack == "example"]
    files = render.render_rack(example)
    for name in ("pi/tftp/cmdline.txt", "pi/sdcard/cmdline.txt"):
        assert identify.rack_from_cmdline(files[PurePosixPath(name)]) == "example"


# --- the rules' edges, each signal alone, and exactly what the errors say ----

def rack(name: str):
    return next(p for p in RACKS if p.rack == name)


def with_identify(name: str, macs=(), router_mac=None):
    """Rack name's profile with only the identify signals given."""
    from dataclasses import replace
    profile = rack(name)
    ident = replace(profile.jumphost.identify, macs=tuple(macs), router_mac=router_mac)
    return replace(profile, jumphost=replace(profile.jumphost, identify=ident))


NOWHERE = dict(addresses={"172.16.0.9"}, gateway="172.16.0.1")


def test_jumphost_macs_alone_identify_a_rack_and_must_match():
    macs_only = [with_identify("skolo-rack4", macs=["3c:ec:ef:10:44:01"]), rack("example")]
    got = identify.identify_jumphost(macs_only, "", None, view(macs={"3c:ec:ef:10:44:01"}, **NOWHERE))
    assert (got.rack, got.source) == ("skolo-rack4", "network")
    # Another MAC in the rack's subnet behind its router: not that rack (no subnet rule for it), but example.
    got = identify.identify_jumphost(macs_only, "", None, view(macs={"52:54:00:12:34:56"}, addresses={"192.168.1.8"},
                                                               gateway="192.168.1.1"))
    assert got.rack == "example"
    with pytest.raises(RackbootError, match="no rack matches"):
        identify.identify_jumphost(macs_only[:1], "", None, view(macs={"52:54:00:12:34:56"},
                                                                 addresses={"192.168.1.8"}, gateway="192.168.1.1"))


def test_the_router_mac_alone_identifies_a_rack():
    router_only = [with_identify("skolo-rack4", router_mac="e4:5f:01:aa:04:01")]
    got = identify.identify_jumphost(router_only, "", None, view(macs={"52:54:00:12:34:56"}, **NOWHERE,
                                                                 gateway_mac="e4:5f:01:aa:04:01"))
    assert got.rack == "skolo-rack4"


def test_a_jumphost_mac_does_not_stand_in_for_the_router_mac():
    """skolo-rack4 gives both: its MAC behind another router is not skolo-rack4."""
    with pytest.raises(RackbootError, match="no rack matches"):
        identify.identify_jumphost([rack("skolo-rack4")], "", None, view(
            macs={"3c:ec:ef:10:44:02"}, addresses={"192.168.1.8"}, gateway="192.168.1.1",
            gateway_mac="aa:bb:cc:00:00:01"))
    with pytest.raises(RackbootError, match="no rack matches"):
        identify.identify_jumphost([rack("skolo-rack4")], "", None, view(
            macs={"52:54:00:12:34:56"}, addresses={"192.168.1.8"}, gateway="192.168.1.1",
            gateway_mac="e4:5f:01:aa:04:01"))


@pytest.mark.parametrize("seen", [dict(addresses={"192.168.1.8"}, gateway="192.168.1.254"),
                                  dict(addresses={"172.16.0.9"}, gateway="192.168.1.1")])
def test_the_subnet_rule_needs_both_an_address_in_the_subnet_and_the_racks_router(seen):
    with pytest.raises(RackbootError, match="no rack matches"):
        identify.identify_jumphost([rack("example")], "", None, view(**seen))


def test_jumphost_errors_say_what_was_seen_and_what_to_do():
    hint = ("boot with rackboot.rack=NAME on the kernel command line, attach the rack's seed "
            "(./build.py seed PROFILE), or add jumphost.identify (macs, router_mac) to the profile")
    with pytest.raises(RackbootError) as caught:
        identify.identify_jumphost(RACKS, "", None, view(macs={"52:54:00:00:00:02", "52:54:00:00:00:01"},
                                                         addresses={"172.16.0.9", "172.16.0.10"},
                                                         gateway="172.16.0.1", gateway_mac="aa:bb:cc:dd:ee:ff"))
    assert str(caught.value) == ("no rack matches this jumphost's network (MACs 52:54:00:00:00:01, "
                                 "52:54:00:00:00:02; addresses 172.16.0.9, 172.16.0.10; gateway 172.16.0.1 "
                                 "(aa:bb:cc:dd:ee:ff))")
    assert caught.value.hint == hint
    with pytest.raises(RackbootError) as caught:
        identify.identify_jumphost(RACKS, "", None, view())
    assert str(caught.value) == ("no rack matches this jumphost's network (MACs none; addresses none; "
                                 "gateway none)")
    twins = load_profiles([REPO / "tests/profiles/twins"])
    with pytest.raises(RackbootError) as caught:
        identify.identify_jumphost(twins, "", None, view(addresses={"10.1.0.8"}, gateway="10.1.0.1"))
    assert str(caught.value) == ("racks twin-a, twin-b all match this jumphost's network (MACs none; "
                                 "addresses 10.1.0.8; gateway 10.1.0.1); refusing to guess")
    assert caught.value.hint == hint
    with pytest.raises(BadInput) as caught:
        identify.identify_jumphost(RACKS, "", "rack9", never_read)
    assert str(caught.value) == ("the seed names rack 'rack9', which is not among this image's racks "
                                 "(big-rack, example, skolo-rack4)")
    assert caught.value.hint == "rebuild the image with that rack's profile, or fix the name"


def test_a_pi_of_an_unknown_serial_is_found_by_its_mac():
    got = identify.identify_pi(RACKS, "0badf00d", frozenset({"dc:a6:32:00:00:02"}))
    assert (got.rack, got.node, got.source) == ("example", "pi-example-02", "MAC")


def test_pi_errors_say_what_was_seen():
    with pytest.raises(RackbootError) as caught:
        identify.identify_pi(RACKS, None, frozenset({"02:00:00:00:00:02", "02:00:00:00:00:01"}))
    assert str(caught.value) == ("this Pi (serial unknown, MACs 02:00:00:00:00:01, 02:00:00:00:00:02) is in no "
                                 "rack profile of this image")
    assert caught.value.hint == "add it to its rack's profile (pis: name, model, serial, mac) and rebuild"
    with pytest.raises(RackbootError) as caught:
        identify.identify_pi(RACKS, "0badf00d", frozenset())
    assert str(caught.value) == "this Pi (serial 0badf00d, MACs none) is in no rack profile of this image"
    several = ("this Pi (serial 6a3f0001, MACs dc:a6:32:04:00:02) matches several Pis: "
               "skolo-rack4/skia-rpi-001, skolo-rack4/skia-rpi-002")
    for cmdline_rack in (None, "skolo-rack4"):
        with pytest.raises(RackbootError) as caught:
            identify.identify_pi(RACKS, "6a3f0001", frozenset({"dc:a6:32:04:00:02"}), cmdline_rack=cmdline_rack)
        assert str(caught.value) == several
        assert caught.value.hint == "a serial or MAC may appear in only one rack's profile"
    with pytest.raises(RackbootError) as caught:
        identify.identify_pi(RACKS, "6a3f0003", frozenset({"dc:a6:32:00:00:01"}), cmdline_rack="big-rack")
    assert str(caught.value) == ("this Pi (serial 6a3f0003, MACs dc:a6:32:00:00:01) booted rack big-rack's boot "
                                 "files (rackboot.rack= on its kernel command line) but is not one of its Pis; "
                                 "it is example/pi-example-01, skolo-rack4/skia-rpi-003")
    assert caught.value.hint == ("boot it from its own rack's jumphost or SD card, or move it in the profiles "
                                 "and rebuild")
    with pytest.raises(BadInput) as caught:
        identify.identify_pi(RACKS, "6a3f0003", frozenset(), cmdline_rack="rack9")
    assert str(caught.value).startswith("the kernel command line names rack 'rack9'")


def test_the_pi_serial_is_the_last_eight_hex_digits_lower_case(tmp_path):
    (tmp_path / "serial-number").write_bytes(b"0000A1B2C3D4\0")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nSerial\t\t: 0000DEADBEEF\nModel\t\t: Raspberry Pi 4\n")
    assert identify.pi_serial(tmp_path / "cpuinfo", tmp_path / "serial-number") == "a1b2c3d4"
    assert identify.pi_serial(tmp_path / "cpuinfo", tmp_path / "absent") == "deadbeef"
    assert identify.pi_serial(tmp_path / "absent", tmp_path / "absent") is None


def test_the_machines_own_files_are_where_linux_and_cloud_init_keep_them():
    import inspect
    assert inspect.signature(identify.rack_from_seed).parameters["instance_data"].default == \
        Path("/run/cloud-init/instance-data.json")
    defaults = inspect.signature(identify.pi_serial).parameters
    assert defaults["cpuinfo"].default == Path("/proc/cpuinfo")
    assert defaults["devicetree"].default == Path("/sys/firmware/devicetree/base/serial-number")


def test_an_identity_is_frozen_compared_without_its_profile_and_needs_one():
    import dataclasses
    from firstboot.layout import Role
    got = identify.identify_pi(RACKS, "6a3f0003", frozenset())
    assert got.to_json() == {"rack": "skolo-rack4", "role": "pi", "node": "skia-rpi-003", "source": "serial"}
    assert repr(got) == "Identity(rack='skolo-rack4', role=<Role.PI: 'pi'>, node='skia-rpi-003', source='serial')"
    assert got == dataclasses.replace(got, profile=rack("example"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.rack = "example"
    with pytest.raises(dataclasses.FrozenInstanceError):
        NetworkView(frozenset(), frozenset(), None, None).gateway = A("10.0.0.1")
    with pytest.raises(TypeError):
        identify.Identity("skolo-rack4", Role.PI, "skia-rpi-003", "serial")


ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.1.50     0x1         0x2         52:54:00:aa:bb:cc     *        eth0
192.168.1.77     0x1         0x0         00:00:00:00:00:00     *        eth0
192.168.1.1      0x1         0x2         E4:5F:01:AA:04:01     *        eth0
"""


class Netifaces:
    """What netifaces reports of a jumphost: lo, two NICs, a tunnel, a default route."""
    AF_LINK, AF_INET = 17, 2

    def __init__(self, gateway="192.168.1.1"):
        self.gateway = gateway

    def interfaces(self):
        return ["lo", "eno1", "eno2", "tun0"]

    def ifaddresses(self, name):
        return {"lo": {17: [{"addr": "00:00:00:00:00:00"}], 2: [{"addr": "127.0.0.1"}]},
                "eno1": {17: [{"addr": "3C:EC:EF:10:44:02"}], 2: [{"addr": "192.168.1.8"}]},
                "eno2": {17: [{"addr": "3c:ec:ef:10:44:03"}, {"addr": ""}]},
                "tun0": {17: [{"addr": "00:00:00:00:00:00"}]}}[name]      # no MAC of its own

    def gateways(self):
        return {"default": {2: (self.gateway, "eno1")}} if self.gateway else {}


@pytest.mark.parametrize("gateway, gateway_mac", [("192.168.1.1", "e4:5f:01:aa:04:01"),
                                                  ("192.168.1.50", "52:54:00:aa:bb:cc"),
                                                  ("192.168.1.77", None), ("192.168.1.99", None)])
def test_the_network_view_is_read_from_the_interfaces_route_and_arp_table(tmp_path, monkeypatch, gateway,
                                                                          gateway_mac):
    import sys
    monkeypatch.setitem(sys.modules, "netifaces", Netifaces(gateway))
    arp = tmp_path / "arp"
    arp.write_text(ARP)
    monkeypatch.setattr(identify, "Path", lambda path: arp if path == "/proc/net/arp" else Path(path))
    seen = NetworkView.read()
    assert seen == NetworkView(frozenset({"3c:ec:ef:10:44:02", "3c:ec:ef:10:44:03"}), frozenset({A("192.168.1.8")}),
                               A(gateway), gateway_mac)


def test_no_default_route_and_no_arp_table(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "netifaces", Netifaces(None))
    assert NetworkView.read().gateway is None and NetworkView.read().gateway_mac is None
    monkeypatch.setitem(sys.modules, "netifaces", Netifaces())
    monkeypatch.setattr(identify, "Path", lambda path: tmp_path / "absent" if path == "/proc/net/arp" else Path(path))
    assert NetworkView.read().gateway_mac is None
