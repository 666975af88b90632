"""The jumphost's serve step on a pretend jumphost: the rack's TFTP tree
linked where dnsmasq serves it, real dnsmasq started through systemctl and
answering TFTP on the loopback, the NFS export loaded by the real exportfs;
a second run changes nothing; a changed profile restarts dnsmasq; an
nfs_root elsewhere is bind-mounted; a missing Pi root is an error the status
command explains."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doubles.secret_manager import SecretManagerDouble
from tests.machine import REPO
from tests.rack import Rack

TOKEN = b"rackboot-serve-test-token"
PROFILES = REPO / "tests/profiles/loopback"


@pytest.fixture
def rack(tmp_path):
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    host = sm.start()
    rack = Rack(tmp_path, PROFILES, "loop", host)
    yield rack
    rack.destroy()
    sm.stop()


def tftp_fetch(rack: Rack, names: list[str], out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    result = rack.machine.run([sys.executable, "-m", "tests.tftp_client", "127.0.0.1", *names, "--out", str(out)],
                              timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for_tftp(rack: Rack, out: Path) -> None:
    """Until dnsmasq (started with --no-block) answers."""
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        probe = rack.machine.run([sys.executable, "-m", "tests.tftp_client", "127.0.0.1", "config.txt",
                                  "--out", str(out)], timeout=60)
        if probe.returncode == 0 and json.loads(probe.stdout)["ok"]:
            return
        time.sleep(0.2)
    raise AssertionError("dnsmasq never answered TFTP:\n" + rack.machine.journal("rackboot-dnsmasq.service"))


def dnsmasq_pid(rack: Rack) -> int:
    return int((rack.machine.systemctl_state / "rackboot-dnsmasq.service.pid").read_text())


def test_jumphost_serves_its_pis(rack, tmp_path):
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    serve = rack.status()["steps"]["serve"]
    assert serve["outcome"] == "done"
    assert sorted(serve["result"]["changed"]) == ["dnsmasq-config", "dnsmasq-unit", "exports", "join-unit",
                                                     "tftp-root"]
    m = rack.machine
    # The link dnsmasq serves through, to the tree the image made for this rack.
    assert os.readlink(m.path("/srv/rackboot/tftp")) == "/usr/share/rackboot/racks/loop/tftp"
    # Real dnsmasq, started through systemctl with the rendered unit and file, answers a Pi 4's requests.
    assert m.path("/etc/systemd/system/rackboot-dnsmasq.service").exists()
    wait_for_tftp(rack, tmp_path / "probe")
    serial = rack.profile().pis[0].serial
    names = [f"{serial}/start4.elf", f"{serial}/config.txt", f"{serial}/vmlinuz", f"{serial}/cmdline.txt"]
    for name, answer in zip(names, tftp_fetch(rack, names, tmp_path / "got")):
        assert answer["ok"], answer
        leaf = name.split("/")[1]
        expected = (m.path(f"/usr/lib/rackboot/pi-boot/{leaf}") if leaf in ("start4.elf", "vmlinuz")
                    else m.path(f"/usr/share/rackboot/racks/loop/tftp/{leaf}"))
        assert Path(answer["saved"]).read_bytes() == expected.read_bytes(), name
    [unknown] = tftp_fetch(rack, ["deadbeef/start4.elf"], tmp_path / "unknown")
    assert not unknown["ok"]
    # The real exportfs loaded the rendered export into the machine's export table.
    etab = m.path("/var/lib/nfs/etab").read_text()
    assert etab.startswith("/srv/rackboot/pi-root\t127.0.0.0/8(ro,") and "no_root_squash" in etab

    # Again: nothing changes, dnsmasq keeps running as it was.
    pid = dnsmasq_pid(rack)
    again = rack.agent()
    assert again.returncode == 0, again.stderr
    assert rack.status()["steps"]["serve"]["result"]["changed"] == []
    assert dnsmasq_pid(rack) == pid

    # A changed profile (full DHCP now) reaches dnsmasq: new file, restarted.
    def full_dhcp(profile):
        profile["netboot"] = {"dhcp": "full", "dhcp_range": {"start": "127.0.9.1", "end": "127.0.9.50"}}
    rack.edit_profile(full_dhcp)
    changed = rack.agent()
    assert changed.returncode == 0, changed.stderr + rack.status_text()
    assert rack.status()["steps"]["serve"]["result"]["changed"] == ["dnsmasq-config", "dnsmasq-unit"]
    assert "dhcp-range=127.0.9.1,127.0.9.50" in m.path("/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    assert dnsmasq_pid(rack) != pid
    wait_for_tftp(rack, tmp_path / "after-restart")


def test_nfs_root_elsewhere_is_bind_mounted(rack):
    rack.edit_profile(lambda p: p.setdefault("netboot", {}).update(nfs_root="/srv/rackboot/racks-pi-root"))
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert "nfs-root" in rack.status()["steps"]["serve"]["result"]["changed"]
    mounts = rack.machine.run(["findmnt", "-n", "-o", "SOURCE,OPTIONS", "/srv/rackboot/racks-pi-root"]).stdout
    assert "pi-root" in mounts and "ro" in mounts.split()[1].split(",")
    assert rack.machine.path("/var/lib/nfs/etab").read_text().startswith("/srv/rackboot/racks-pi-root\t")
    again = rack.agent()
    assert again.returncode == 0 and "nfs-root" not in rack.status()["steps"]["serve"]["result"]["changed"]


def test_missing_pi_root_is_explained(rack):
    subprocess.run(["rm", "-rf", str(rack.machine.path("/srv/rackboot") / "pi-root")], check=True)
    failed = rack.agent()
    assert failed.returncode != 0
    status = rack.status()
    assert status["failed"] == "serve"
    assert "/srv/rackboot/pi-root/usr/lib/rackboot" in status["steps"]["serve"]["error"]
    assert "token" not in status["steps"]          # the steps after a failure do not run
    text = rack.status_text()
    assert "serve" in text and "no Pi netboot files for rack loop" in text and "./build.py image" in text
