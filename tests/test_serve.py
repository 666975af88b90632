"""The jumphost's serve step on a pretend jumphost: the rack's TFTP tree
linked where dnsmasq serves it, real dnsmasq started through systemctl and
answering TFTP on the loopback, the Pis' root mounted from its squashfs by
the image's mount unit and its NFS export loaded by the real exportfs; a
second run changes nothing; a changed profile restarts dnsmasq; an nfs_root
elsewhere is bind-mounted; a missing Pi root is an error the status command
explains; a Pi root that is not a filesystem of its own is never exported."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firstboot import serve
from image import netboot
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack

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


def from_test_host(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """As a Pi asks: from outside the jumphost, at its address on the rack's bridge."""
    return subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def tftp_fetch(rack: Rack, names: list[str], out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    result = from_test_host([sys.executable, "-m", "tests.lib.tftp_client", str(rack.machine.address), *names,
                             "--out", str(out)], timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def wait_for_tftp(rack: Rack, out: Path) -> None:
    """Until dnsmasq (started with --no-block) answers."""
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        probe = from_test_host([sys.executable, "-m", "tests.lib.tftp_client", str(rack.machine.address),
                                "config.txt", "--out", str(out)], timeout=60)
        if probe.returncode == 0 and json.loads(probe.stdout)["ok"]:
            return
        time.sleep(0.2)
    raise AssertionError("dnsmasq never answered TFTP:\n" + rack.machine.journal("rackboot-dnsmasq.service"))


def findmnt(machine, path: str) -> dict:
    """What is mounted at path, as the machine sees it (loop devices without their number)."""
    result = machine.run(["findmnt", "-n", "-J", "-o", "SOURCE,FSTYPE,OPTIONS,FSROOT", "--mountpoint", path])
    assert result.returncode == 0, f"nothing mounted at {path}: {result.stderr}"
    [mount] = json.loads(result.stdout)["filesystems"]
    return {"source": mount["source"].rstrip("0123456789"), "fstype": mount["fstype"],
            "ro": "ro" in mount["options"].split(","), "fsroot": mount["fsroot"]}


def st_dev(machine, path: str) -> int:
    result = machine.run([sys.executable, "-c", f"import os; print(os.stat({path!r}).st_dev)"])
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def dnsmasq_pid(rack: Rack) -> int:
    return int((rack.machine.systemctl_state / "rackboot-dnsmasq.service.pid").read_text())


def test_jumphost_serves_its_pis(rack, tmp_path):
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    serve = rack.status()["steps"]["serve"]
    assert serve["outcome"] == "done"
    # "bundle": the join service now serves the rack's bundle in use (firstboot/pi_bundle.py).
    assert sorted(serve["result"]["changed"]) == ["bundle", "dnsmasq-config", "dnsmasq-unit", "exports", "join-unit",
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
    # The Pis' root is the image's squashfs, mounted read-only by its unit: a filesystem of its own.
    assert findmnt(m, "/srv/rackboot/pi-root") == {"source": "/dev/loop", "fstype": "squashfs", "ro": True,
                                                   "fsroot": "/"}
    assert st_dev(m, "/srv/rackboot/pi-root") != st_dev(m, "/")
    assert st_dev(m, "/srv/rackboot/pi-root") != st_dev(m, "/etc/rancher")
    # The real exportfs loaded the rendered export into the machine's export table.
    etab = m.path("/var/lib/nfs/etab").read_text()
    assert etab.startswith(f"/srv/rackboot/pi-root\t{rack.network.subnet}(ro,") and "no_root_squash" in etab
    assert ",mountpoint," in etab and ",fsid=" in etab

    # Again: nothing changes, dnsmasq keeps running as it was.
    pid = dnsmasq_pid(rack)
    again = rack.agent()
    assert again.returncode == 0, again.stderr
    assert rack.status()["steps"]["serve"]["result"]["changed"] == []
    assert dnsmasq_pid(rack) == pid

    # A changed profile (full DHCP now) reaches dnsmasq: new file, restarted.
    def full_dhcp(profile):
        profile["netboot"] = {"dhcp": "full", "dhcp_range": {"start": rack.ip("127.0.9.1"), "end": rack.ip("127.0.9.50")}}
    rack.edit_profile(full_dhcp)
    changed = rack.agent()
    assert changed.returncode == 0, changed.stderr + rack.status_text()
    assert rack.status()["steps"]["serve"]["result"]["changed"] == ["dnsmasq-config", "dnsmasq-unit"]
    assert f"dhcp-range={rack.ip('127.0.9.1')},{rack.ip('127.0.9.50')}" in m.path("/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    assert dnsmasq_pid(rack) != pid
    wait_for_tftp(rack, tmp_path / "after-restart")


def test_a_run_that_fails_at_exportfs_is_finished_by_the_next(rack, tmp_path):
    """A changed profile, and exportfs fails: dnsmasq keeps running as it was,
    no unit is left changed on disk but not loaded, and the next run (the
    unit's restart) places dnsmasq's new file and unit and restarts it. (It
    did not: the files were placed before exportfs, so the next run found
    nothing changed and left dnsmasq on its old configuration.)"""
    assert rack.agent().returncode == 0
    pid = dnsmasq_pid(rack)
    rack.edit_profile(lambda p: p.update(netboot={"dhcp": "full",
                                                    "dhcp_range": {"start": rack.ip("127.0.9.1"),
                                                                   "end": rack.ip("127.0.9.50")}}))
    faulty = tmp_path / "faulty-bin"
    faulty.mkdir()
    (faulty / "exportfs").write_text("#!/bin/sh\necho 'exportfs: could not open /var/lib/nfs/.etab.lock' >&2\n"
                                     "exit 1\n")
    (faulty / "exportfs").chmod(0o755)
    failed = rack.agent(PATH=f"{faulty}:{rack.machine.env()['PATH']}")
    assert failed.returncode == 1
    assert "exportfs -ra failed" in rack.status()["steps"]["serve"]["error"]
    assert dnsmasq_pid(rack) == pid
    for unit in ("rackboot-dnsmasq.service", "rackboot-join.service"):
        assert not rack.machine.need_daemon_reload(unit), unit
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    # "bundle": the failed run recorded no bundle served, so the join service restarts to be sure of its.
    assert rack.status()["steps"]["serve"]["result"]["changed"] == ["dnsmasq-config", "dnsmasq-unit", "bundle"]
    assert f"dhcp-range={rack.ip('127.0.9.1')},{rack.ip('127.0.9.50')}" in rack.machine.path("/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    assert dnsmasq_pid(rack) != pid
    assert not rack.machine.need_daemon_reload("rackboot-dnsmasq.service")


def test_nfs_root_elsewhere_is_bind_mounted(rack):
    rack.edit_profile(lambda p: p.setdefault("netboot", {}).update(nfs_root="/srv/rackboot/racks-pi-root"))
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert "nfs-root" in rack.status()["steps"]["serve"]["result"]["changed"]
    # The bind of the whole squashfs: the same filesystem as the image's mount, read-only.
    m = rack.machine
    assert findmnt(m, "/srv/rackboot/racks-pi-root") == findmnt(m, "/srv/rackboot/pi-root")
    assert findmnt(m, "/srv/rackboot/racks-pi-root")["ro"]
    assert st_dev(m, "/srv/rackboot/racks-pi-root") == st_dev(m, "/srv/rackboot/pi-root") != st_dev(m, "/")
    assert rack.machine.path("/var/lib/nfs/etab").read_text().startswith("/srv/rackboot/racks-pi-root\t")
    again = rack.agent()
    assert again.returncode == 0 and "nfs-root" not in rack.status()["steps"]["serve"]["result"]["changed"]


def test_missing_pi_root_is_explained(rack):
    rack.machine.path("/usr/lib/rackboot/pi-root.squashfs").unlink()      # an image without it
    failed = rack.agent()
    assert failed.returncode != 0
    status = rack.status()
    assert status["failed"] == "serve"
    assert "/usr/lib/rackboot/pi-root.squashfs" in status["steps"]["serve"]["error"]
    assert "token" not in status["steps"]          # the steps after a failure do not run
    text = rack.status_text()
    assert "serve" in text and "no Pi netboot files for rack loop" in text and "./build.py image" in text


def nothing_served(rack) -> None:
    m = rack.machine
    assert not m.path("/etc/exports.d/rackboot.exports").exists()
    assert not m.path("/var/lib/nfs/etab").exists() or m.path("/var/lib/nfs/etab").read_text() == ""
    assert not (m.systemctl_state / "rackboot-dnsmasq.service.pid").exists()
    assert "token" not in rack.status()["steps"]


def test_pi_root_on_the_jumphost_filesystem_is_never_exported(rack):
    """An image whose Pi root is a directory of the jumphost's own filesystem
    (as before it was a squashfs), bind-mounted where the export is: with
    no_subtree_check a handle would reach every file of that filesystem, so
    the serve step refuses, saying why and what to do, and exports nothing."""
    m = rack.machine
    old_root = m.path("/srv/rackboot") / "old-pi-root"
    (old_root / "usr/lib/rackboot").mkdir(parents=True)
    m.path(f"/etc/systemd/system/{serve.PI_ROOT_UNIT}").write_text(
        netboot.PI_ROOT_MOUNT_UNIT.replace("What=/usr/lib/rackboot/pi-root.squashfs", "What=/srv/rackboot/old-pi-root")
        .replace("Type=squashfs", "Type=none").replace("Options=ro,loop,", "Options=bind,ro,"))
    failed = rack.agent()
    assert failed.returncode != 0
    error = rack.status()["steps"]["serve"]["error"]
    assert error.startswith("refusing to export /srv/rackboot/pi-root (the Pis' root): it is a bind mount of "), error
    assert "a directory of a larger filesystem" in error and "file handle" in error
    text = rack.status_text()
    assert "must be a filesystem of its own" in text and "./build.py image" in text
    nothing_served(rack)


def test_a_refused_pi_root_withdraws_an_earlier_export(rack):
    """Served once; then the Pis' root is no longer a filesystem of its own
    (its unit changed to bind a directory of the jumphost's filesystem): the
    next run refuses and unloads the earlier export rather than keep it."""
    m = rack.machine
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert m.path("/var/lib/nfs/etab").read_text().startswith("/srv/rackboot/pi-root\t")
    stopped = m.run(["systemctl", "stop", serve.PI_ROOT_UNIT])
    assert stopped.returncode == 0, stopped.stderr
    (m.path("/srv/rackboot") / "old-pi-root/usr/lib/rackboot").mkdir(parents=True)
    m.path(f"/etc/systemd/system/{serve.PI_ROOT_UNIT}").write_text(
        netboot.PI_ROOT_MOUNT_UNIT.replace("What=/usr/lib/rackboot/pi-root.squashfs", "What=/srv/rackboot/old-pi-root")
        .replace("Type=squashfs", "Type=none").replace("Options=ro,loop,", "Options=bind,ro,"))
    # Changed on a running system: systemd uses it once reloaded (as an administrator would, or a boot).
    assert m.run(["systemctl", "daemon-reload"]).returncode == 0
    failed = rack.agent()
    assert failed.returncode != 0
    assert rack.status()["steps"]["serve"]["error"].startswith("refusing to export /srv/rackboot/pi-root ")
    assert not m.path("/etc/exports.d/rackboot.exports").exists()
    assert "/srv/rackboot/pi-root" not in m.path("/var/lib/nfs/etab").read_text()


def test_pi_root_without_its_mount_is_never_exported(rack):
    """The mount unit missing (an image from before the squashfs): no export
    of the empty directory beneath."""
    rack.machine.path(f"/etc/systemd/system/{serve.PI_ROOT_UNIT}").unlink()
    failed = rack.agent()
    assert failed.returncode != 0
    error = rack.status()["steps"]["serve"]["error"]
    assert error.startswith("cannot mount the Pis' root at /srv/rackboot/pi-root: systemctl start "), error
    assert rack.machine.run(["mountpoint", "-q", "/srv/rackboot/pi-root"]).returncode != 0
    nothing_served(rack)


def test_nfs_root_on_the_jumphost_filesystem_is_never_exported(rack):
    """netboot.nfs_root already a mount point, but of a directory of the
    jumphost's filesystem: refused, though the Pis' root itself is fine."""
    rack.edit_profile(lambda p: p.setdefault("netboot", {}).update(nfs_root="/srv/rackboot/racks-pi-root"))
    m = rack.machine
    (m.path("/srv/rackboot") / "elsewhere").mkdir()
    bound = m.run(["sh", "-ec", "mkdir -p /srv/rackboot/racks-pi-root && "
                   "mount --bind /srv/rackboot/elsewhere /srv/rackboot/racks-pi-root"])
    assert bound.returncode == 0, bound.stderr
    failed = rack.agent()
    assert failed.returncode != 0
    error = rack.status()["steps"]["serve"]["error"]
    assert error.startswith("refusing to export /srv/rackboot/racks-pi-root (netboot.nfs_root): "), error
    nothing_served(rack)


@pytest.mark.machine     # a mount namespace
def test_own_filesystem_check_against_the_root_filesystem(tmp_path):
    """The check itself, in a mount namespace of this test's: a tmpfs is a
    filesystem of its own; a bind of a directory is not; and a bind of the
    root filesystem's own root (mount root /, but the root's st_dev) is not."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from firstboot import serve
from firstboot.errors import RackbootError
import subprocess
def verdict(path):
    try:
        serve.require_own_filesystem(Path(path), "test")
        return "ok"
    except RackbootError as err:
        return str(err)
base = Path({str(tmp_path)!r})
for name in ("tmpfs", "dir", "bound", "rootbind", "plain"):
    (base / name).mkdir()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(base / "tmpfs")], check=True)
subprocess.run(["mount", "--bind", str(base / "dir"), str(base / "bound")], check=True)
subprocess.run(["mount", "--bind", "/", str(base / "rootbind")], check=True)
for name in ("tmpfs", "bound", "rootbind", "plain"):
    print(name, "|", verdict(base / name))
"""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    verdicts = dict(line.split(" | ", 1) for line in result.stdout.splitlines())
    assert verdicts["tmpfs"] == "ok"
    assert "is a bind mount of " in verdicts["bound"] and "a directory of a larger filesystem" in verdicts["bound"]
    assert "is on the jumphost's root filesystem" in verdicts["rootbind"]
    assert "not a filesystem of its own" in verdicts["plain"]


def test_a_verbose_run_shows_each_command(rack):
    """`+ argv` for every command the agent runs (RACKBOOT_VERBOSE=1 in agent.env, or run -v)."""
    done = rack.agent(RACKBOOT_VERBOSE="1")
    assert done.returncode == 0, done.stderr + rack.status_text()
    for line in ("+ systemctl start 'srv-rackboot-pi\\x2droot.mount'", "+ exportfs -ra",
                 "+ systemctl enable rackboot-dnsmasq.service", "+ systemctl enable rackboot-join.service"):
        assert line in done.stderr.splitlines(), line
    assert "+ exportfs" not in rack.agent().stderr      # quiet by default: the unit's output is on the console


def test_a_unit_that_fails_hints_its_own_journal(tmp_path, monkeypatch):
    """ensure_running's failures name the unit's journal (dnsmasq's, not k3s's)."""
    from firstboot import system
    from firstboot.commands import CommandFailed
    fake = tmp_path / "bin/systemctl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"Failed to enable unit: $2 is masked.\" >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(CommandFailed) as caught:
        system.ensure_running(serve.DNSMASQ_UNIT, restart=False)
    assert str(caught.value).startswith("systemctl enable rackboot-dnsmasq.service failed (exit status 1)")
    assert "is masked" in str(caught.value)
    assert caught.value.hint == "journalctl -u rackboot-dnsmasq.service says more"


def test_the_default_nfs_root_is_the_pi_root_itself():
    """The schema's default nfs_root (data, which cannot import the Layout) is
    where the image mounts the Pis' root: a rack that keeps the default
    exports that mount as it is, with no bind mount."""
    from firstboot.layout import MACHINE
    schema = json.loads((REPO / "rack-profiles/schema.json").read_text())
    assert schema["properties"]["netboot"]["properties"]["nfs_root"]["default"] == str(MACHINE.pi_root)
