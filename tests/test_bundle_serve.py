"""A pushed bundle on a pretend jumphost (tests/lib/rack.py: real dnsmasq,
the k3s stand-in): the agent's next run, with no reboot, serves the Pi the
bundle adds (its TFTP directory, its DHCP host line, dnsmasq restarted) and
drops the one it removes (TFTP directory, DHCP line, Node), touching nothing
else; a pushed bundle that no longer verifies is skipped, with a log line,
for the newest one that does."""

import os

import pytest
import yaml

from image import bundle_build
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack
from tests.test_serve import dnsmasq_pid, tftp_fetch, wait_for_tftp

TOKEN = b"rackboot-bundle-serve-test-token"


def pi(number: int) -> dict:
    return {"name": f"loop-pi-{number:02d}", "model": "pi4", "serial": f"0b0b0b{number:02d}",
            "mac": f"dc:a6:32:00:0b:{number:02d}", "address": f"127.0.0.{20 + number}"}


@pytest.fixture
def rack(tmp_path):
    source = tmp_path / "source"
    (source / "kube").mkdir(parents=True)
    loop = yaml.safe_load((REPO / "tests/profiles/loopback/loop.yaml").read_text())
    loop["netboot"] = {"dhcp": "full", "dhcp_range": {"start": "127.0.9.1", "end": "127.0.9.50"}}
    loop["pis"] = [pi(1), pi(2)]
    (source / "loop.yaml").write_text(yaml.safe_dump(loop))
    for manifest in (REPO / "tests/profiles/loopback/kube").iterdir():
        (source / "kube" / manifest.name).write_bytes(manifest.read_bytes())
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path / "rack", source, "loop", sm.start())
    yield rack
    rack.destroy()
    sm.stop()


def make_node(rack: Rack, name: str, rack_label: str) -> None:
    """A Node as a Pi's k3s registers it, with the labels its config gives it."""
    dyn = rack.kube()
    nodes = dyn.resources.get(api_version="v1", kind="Node")
    dyn.create(nodes, body={"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": name, "labels": {"rackboot.dev/rack": rack_label, "rackboot.dev/role": "pi"}}})


def node_names(rack: Rack) -> list[str]:
    dyn = rack.kube()
    return sorted(n.metadata.name for n in dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items)


def push_bundle(rack: Rack, revision: int, change) -> None:
    """What bundle install leaves: the changed profile's bundle in the jumphost's store."""
    path = rack.profiles / "loop.yaml"
    profile = yaml.safe_load(path.read_text())
    change(profile)
    path.write_text(yaml.safe_dump(profile))
    bundle_build.write(rack.profile(), rack.machine.path(f"/var/lib/rackboot/bundles/loop/{revision}"), revision, None)


def dhcp_hosts(rack: Rack) -> list[str]:
    conf = rack.machine.path("/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    return [line for line in conf.splitlines() if line.startswith("dhcp-host=")]


def test_a_pushed_bundle_adds_and_removes_pis_without_a_reboot(rack, tmp_path):
    first = rack.agent()
    assert first.returncode == 0, first.stderr + rack.status_text()
    wait_for_tftp(rack, tmp_path / "probe")
    one, two, three = (pi(n) for n in (1, 2, 3))
    assert [ok["ok"] for ok in tftp_fetch(rack, [f"{two['serial']}/start4.elf"], tmp_path / "before")] == [True]
    for name, owner in (("loop-pi-01", "loop"), ("loop-pi-02", "loop"), ("pi-of-another-rack", "other")):
        make_node(rack, name, owner)
    nodes_before = node_names(rack)
    pid = dnsmasq_pid(rack)

    on_bridge = [{**p, "address": rack.ip(p["address"])} for p in (one, three)]
    push_bundle(rack, 5, lambda p: p.update(pis=on_bridge))            # Pi 3 added, Pi 2 removed
    second = rack.agent()
    assert second.returncode == 0, second.stderr + rack.status_text()
    status = rack.status()
    assert status["bundle"]["revision"] == 5
    assert sorted(status["steps"]["serve"]["result"]["changed"]) == ["dnsmasq-config", "tftp-root"]
    assert os.readlink(rack.machine.path("/srv/rackboot/tftp")) == "/var/lib/rackboot/bundles/loop/5/tftp"
    assert dnsmasq_pid(rack) != pid                                   # restarted; the machine was not rebooted
    assert "rack bundle in use: loop revision 5 (sha256:" in rack.status_text()
    wait_for_tftp(rack, tmp_path / "probe2")
    names = [f"{s}/{leaf}" for s in (one["serial"], two["serial"], three["serial"])
             for leaf in ("start4.elf", "cmdline.txt")]
    answers = {name: answer["ok"] for name, answer in zip(names, tftp_fetch(rack, names, tmp_path / "after"))}
    assert answers == {f"{one['serial']}/start4.elf": True, f"{one['serial']}/cmdline.txt": True,
                       f"{two['serial']}/start4.elf": False, f"{two['serial']}/cmdline.txt": False,
                       f"{three['serial']}/start4.elf": True, f"{three['serial']}/cmdline.txt": True}
    hosts = dhcp_hosts(rack)
    assert [h.split(",")[0] for h in hosts] == [f"dhcp-host={one['mac']}", f"dhcp-host={three['mac']}"]
    assert hosts[1].endswith(",loop-pi-03")
    # The removed Pi's Node goes; the others', the jumphost's and another rack's stay.
    assert status["steps"]["apply"]["result"]["nodes_removed"] == ["loop-pi-02"]
    assert node_names(rack) == [n for n in nodes_before if n != "loop-pi-02"]

    # The pushed bundle damaged: skipped, with a log line, for the image's.
    rack.machine.path("/var/lib/rackboot/bundles/loop/5/tftp/cmdline.txt").write_text("damaged\n")
    third = rack.agent()
    assert third.returncode == 0, third.stderr + rack.status_text()
    assert "rack loop: skipping the bundle at /var/lib/rackboot/bundles/loop/5, which failed verification" \
        in third.stderr
    assert rack.status()["bundle"]["revision"] == -1      # the image's tree (unsealed in this pretend image)
    assert os.readlink(rack.machine.path("/srv/rackboot/tftp")) == "/usr/share/rackboot/racks/loop/tftp"
    assert [h.split(",")[0] for h in dhcp_hosts(rack)] == [f"dhcp-host={one['mac']}", f"dhcp-host={two['mac']}"]
