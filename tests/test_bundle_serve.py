"""A pushed bundle on a pretend jumphost (tests/lib/rack.py: real dnsmasq,
the k3s stand-in): the agent's next run, with no reboot, serves the Pi the
bundle adds (its TFTP directory, its DHCP host line, dnsmasq restarted) and
drops the one it removes (TFTP directory, DHCP line, Node), touching nothing
else; a pushed bundle that no longer verifies is skipped, with a log line,
for the newest one that does."""

import dataclasses
import os
import time

import pytest
import yaml

from firstboot import bundle, bundle_archive, join, pi_bundle
from firstboot.layout import Layout
from image import bundle_build
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack
from tests.test_pi_access import access, get, wait_for_join_service
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
    assert sorted(status["steps"]["serve"]["result"]["changed"]) == ["bundle", "dnsmasq-config", "tftp-root"]
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


def bundle_served(rack: Rack) -> bytes:
    """The join service's answer to GET /v1/bundle once it serves one (the
    agent restarts it without waiting; the old one says 404 until it goes)."""
    jumphost, port = str(rack.machine.address), rack.profile().netboot.join_port
    deadline = time.monotonic() + 60
    while True:
        try:
            status, body = get(jumphost, port, join.BUNDLE_PATH)
            if status == 200:
                return body
        except OSError:
            status = None
        assert time.monotonic() < deadline, f"no bundle from the join service (last: {status})\n" \
            + rack.machine.journal("rackboot-join.service")
        time.sleep(0.2)


def test_a_pi_added_by_a_push_finds_itself_in_its_jumphosts_bundle(rack, tmp_path):
    """The Pis' shared root carries the image's bundles only: a Pi added by a
    push identifies itself (pi-access, then the agent) from the bundle its
    jumphost's join service serves, which the agent restarts to serve it."""
    first = rack.agent()
    assert first.returncode == 0, first.stderr + rack.status_text()
    three = pi(3)
    added = rack.add_machine("pi3", cmdline="console=ttyAMA0 root=/dev/nfs rackboot.rack=loop",
                             address=rack.ip(three["address"]),
                             cpuinfo=f"processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000{three['serial']}\n")
    # Before the push: the image's tree is unsealed here, so the join service has no bundle to give.
    wait_for_join_service(rack)
    before = access(rack, added, RACKBOOT_HOST_KEY_TIMEOUT=0)
    assert before.returncode == 1
    assert "/v1/bundle (HTTP 404): using the bundles this Pi has" in before.stderr
    assert "is in no rack profile of this image" in before.stderr

    on_bridge = [{**p, "address": rack.ip(p["address"])} for p in (pi(1), pi(2), three)]
    push_bundle(rack, 5, lambda p: p.update(pis=on_bridge))
    second = rack.agent()
    assert second.returncode == 0, second.stderr + rack.status_text()
    assert "bundle" in rack.status()["steps"]["serve"]["result"]["changed"]     # the join service restarted
    served = bundle_served(rack)
    assert served == bundle_archive.pack(rack.machine.path("/var/lib/rackboot/bundles/loop/5"))

    after = access(rack, added)
    assert after.returncode == 0, after.stderr
    assert "rack loop: revision 5 from http://" in after.stderr
    assert added.run(["hostname"]).stdout == "loop-pi-03\n"
    assert "ssh access for loop-pi-03 of rack loop" in after.stderr and "host key from the jumphost" in after.stderr
    kept = added.path("/var/lib/rackboot/bundles/loop/5")
    assert bundle.verify(kept, "loop", 5).digest == rack.status()["bundle"]["digest"]
    # The agent's identify step finds it the same way, and keeps one bundle, the jumphost's.
    joined = rack.agent(added, role="pi")
    identified = rack.status(added)["steps"]["identify"]
    assert identified["outcome"] == "done", joined.stderr + rack.status_text(added)
    assert identified["result"]["node"] == "loop-pi-03"
    assert rack.status(added)["bundle"]["revision"] == 5
    assert sorted(p.name for p in added.path("/var/lib/rackboot/bundles/loop").iterdir()) == ["5"]


def test_a_damaged_or_foreign_bundle_from_the_network_is_not_kept(rack, tmp_path, monkeypatch, caplog):
    """What a Pi takes from the rack network is hostile input: an archive
    that does not verify, or another rack's bundle, is logged and never kept."""
    made = bundle_build.write(rack.profile(), tmp_path / "good/loop", 7, None)
    good = bundle_archive.pack(made.directory)
    foreign = bundle_archive.pack(bundle_build.write(dataclasses.replace(rack.profile(), rack="other"),
                                                     tmp_path / "foreign/other", 8, None).directory)
    layout = Layout(tmp_path / "pi").moving(racks=made.directory.parent)
    damaged = good.replace(b"loop-pi-01", b"loop-pi-0X", 1)
    assert damaged != good
    for answer, why in ((damaged, "differ from BUNDLE.json"), (b"not a tar" * 100, "not a bundle archive"), (foreign, "other")):
        caplog.clear()
        monkeypatch.setattr(pi_bundle, "download", lambda *_args, answer=answer: answer)
        assert pi_bundle.fetch(layout, "loop", timeout=0) is None
        assert not list((layout.pushed_bundles / "loop").iterdir())
        [line] = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
        assert why in line, line
    monkeypatch.setattr(pi_bundle, "download", lambda *_args: good)
    assert pi_bundle.fetch(layout, "loop", timeout=0).revision == 7
    assert [p.name for p in (layout.pushed_bundles / "loop").iterdir()] == ["7"]
    # An SD-card Pi keeps its card's bundle: it asks nobody.
    monkeypatch.setattr(pi_bundle, "download", lambda *_args: pytest.fail("an SD-card Pi fetched a bundle"))
    pi_bundle.refresh(layout, "console=serial0 root=LABEL=rackboot-pi rw rackboot.rack=loop", timeout=0)
