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
