"""k3s upgraded in place, the Pis following (firstboot/k3s_store.py,
firstboot/k3s_follow.py, firstboot/pi_watch.py).

Machine: a joined Pi; the jumphost gets a newer k3s pushed (its pushed
store, as `firstboot bundle install --k3s-bundle` leaves it: tests/test_push.py
pushes it over sshd) and its profile moves to it; its agent upgrades the
server keeping the datastore. The Pi's own root has only the old version and
its bundle still names the old one: its watcher sees that the server moved
on and runs its agent again, which fetches the served version from the join
service, checks it and installs it. A Pi booting after the upgrade runs the
served version straight away, and refuses a damaged download.
Pure: what the join service serves of a machine's k3s bundles, and the
jumphost's checks before a pushed k3s is put in place."""

import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from firstboot import bundle_install, k3s_follow, k3s_store
from firstboot.errors import BadInput
from firstboot.layout import Layout
from tests.doubles import k3s_standin_bundle
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import DOUBLES_BIN, REPO
from tests.lib.rack import UPGRADE_BUNDLE_ENV, VERSION, Rack
from tests.test_pi_join import eventually, join, nodes, ready_condition

NEWER = "v1.32.0+k3s1"          # the next minor: what Kubernetes lets a server move to
TOKEN = b"loop-rack-token-follow-3a1"
PI = "loop-pi-01"
FIRSTBOOT = "rackboot-firstboot.service"


def newer_bundle(tmp_path):
    """The k3s to upgrade to: RACKBOOT_K3S_UPGRADE_BUNDLE's, or the stand-in's next minor."""
    real = os.environ.get(UPGRADE_BUNDLE_ENV)
    if real:
        return SimpleNamespace(path=Path(real), version=json.loads((Path(real) / "bundle.json").read_text())["version"])
    if k3s_standin_bundle.real_bundle():
        pytest.skip(f"needs two k3s versions: with RACKBOOT_K3S_BUNDLE, set {UPGRADE_BUNDLE_ENV} to a later one")
    return SimpleNamespace(path=k3s_standin_bundle.make(tmp_path / "fetched", NEWER), version=NEWER)


@pytest.fixture
def rack(tmp_path):
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    try:
        done = rack.agent()
        assert done.returncode == 0, done.stderr + rack.status_text()
        yield rack
    finally:
        rack.destroy()
        sm.stop()


def upgrade_jumphost(rack, newer) -> None:
    """What a push with --k3s-bundle does on the jumphost: the bundle in its
    pushed store, the rack's bundle naming it (only the jumphost's: the Pis'
    root is as the image made it), the agent run again."""
    assert k3s_store.accept(Layout(rack.machine.root), newer.path) == newer.version
    path = rack.profiles / f"{rack.rack}.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["k3s"]["version"] = newer.version
    path.write_text(yaml.safe_dump(profile))
    rack.render_into(rack.machine)
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()


def kubelet_version(rack, name: str) -> str:
    return rack.get("v1", "Node", name).status.nodeInfo.kubeletVersion


def install_agent_unit(rack, pi) -> None:
    """The Pi's rackboot-firstboot.service, as the test runs the agent (the
    image's runs /usr/bin/python3 with the image's libraries, which a pretend
    Pi has not): what the watcher restarts."""
    env = {**{k: str(v) for k, v in rack.env.items()}, "PYTHONPATH": str(REPO),
           "PATH": f"{DOUBLES_BIN}:/usr/bin:/bin"}
    pi.path(f"/etc/systemd/system/{FIRSTBOOT}").write_text(
        "[Unit]\nDescription=rackboot first-boot agent (the test's)\n\n[Service]\nType=oneshot\n"
        "RemainAfterExit=yes\n" + "".join(f"Environment={k}={v}\n" for k, v in sorted(env.items()))
        + f"ExecStart={sys.executable} -m firstboot run --role=pi\n")
    assert pi.run(["systemctl", "daemon-reload"]).returncode == 0


def watch(pi) -> str:
    done = pi.run([sys.executable, "-m", "firstboot", "pi-watch"], RACKBOOT_PI_WATCH_CHECKS=2,
                  RACKBOOT_PI_WATCH_HOLDOFF=600)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.machine
def test_a_jumphost_upgraded_in_place_brings_its_joined_pi_along(rack, tmp_path):
    newer = newer_bundle(tmp_path)
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    assert eventually(lambda: ready_condition(rack, PI).status == "True")
    install_agent_unit(rack, pi)
    dyn = rack.kube()
    maps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    made = dyn.create(maps, namespace="default", body={"apiVersion": "v1", "kind": "ConfigMap",
                                                       "metadata": {"name": "made-by-hand"}, "data": {"a": "1"}})
    before = {name: node.metadata.uid for name, node in nodes(rack).items()}
    assert watch(pi) == ""                                     # nothing to follow yet

    upgrade_jumphost(rack, newer)
    result = rack.status()["steps"]["k3s"]["result"]
    assert result["version"] == newer.version and result["started"] == "restarted"
    assert "binary" in result["changed"]
    assert eventually(lambda: kubelet_version(rack, "jumphost-loop") == newer.version)
    # The datastore is the same one: the hand-made object and every Node, with their uids.
    assert dyn.get(maps, name="made-by-hand", namespace="default").metadata.uid == made.metadata.uid
    assert {name: node.metadata.uid for name, node in nodes(rack).items()} == before
    assert kubelet_version(rack, PI) == VERSION

    # The Pi's watcher: the same finding twice, then its agent runs again and installs the served k3s.
    assert watch(pi) == ""
    said = watch(pi)
    assert said == (f"pi-watch: the jumphost's k3s runs {newer.version}, this Pi's {VERSION} (2 checks); "
                    f"restarting {FIRSTBOOT} to install the jumphost's k3s\n")
    assert eventually(lambda: (rack.status(pi).get("steps", {}).get("report", {}).get("outcome") == "done"
                               and kubelet_version(rack, PI) == newer.version), within=240), \
        rack.status_text(pi) + pi.journal(FIRSTBOOT)
    assert eventually(lambda: ready_condition(rack, PI).status == "True")
    assert newer.version in pi.run(["k3s", "--version"]).stdout
    assert sorted(p.name for p in pi.path("/var/lib/rackboot/k3s").iterdir()) == [newer.version]
    assert rack.get("v1", "Node", PI).metadata.uid == before[PI]
    assert watch(pi) == "" and watch(pi) == ""                 # caught up: left alone


@pytest.mark.machine
def test_a_pi_booting_after_the_upgrade_runs_the_served_k3s_and_refuses_a_damaged_one(rack, tmp_path):
    newer = newer_bundle(tmp_path)
    upgrade_jumphost(rack, newer)
    served = rack.machine.path(f"/var/lib/rackboot/k3s/{newer.version}/k3s")
    good = served.read_bytes()
    served.write_bytes(good + b"\n# flipped on the jumphost")
    pi = rack.add_pi("pi1", "0b0b0b01")
    done = rack.agent(pi, role="pi")
    assert done.returncode == 1
    k3s_step = rack.status(pi)["steps"]["k3s"]
    assert k3s_step["error"].startswith(f"k3s {newer.version} from the jumphost: ")
    assert "/k3s: checksum mismatch" in k3s_step["error"]
    assert not os.listdir(pi.path("/var/lib/rackboot/k3s"))       # nothing kept, no staging left
    assert not pi.path("/usr/local/bin/k3s").exists()

    served.write_bytes(good)
    join(rack, pi)
    assert rack.status(pi)["steps"]["k3s"]["result"]["version"] == newer.version
    assert eventually(lambda: kubelet_version(rack, PI) == newer.version)


# ------------------------------------------------------------------ pure
def test_the_join_service_serves_the_served_versions_files_and_nothing_else(tmp_path):
    layout = Layout(tmp_path)
    k3s_standin_bundle.make(layout.k3s_bundles, VERSION)
    assert k3s_follow.answer(layout, "/v1/k3s")[0] == 503          # the server is not ready yet
    assert k3s_follow.answer(layout, f"/v1/k3s/{VERSION}/k3s-arm64")[0] == 404
    k3s_store.record_served(layout, VERSION)
    status, body, kind = k3s_follow.answer(layout, "/v1/k3s")
    assert (status, json.loads(body), kind) == (200, {"version": VERSION}, "application/json")
    for name in ("k3s-arm64", "sha256sum-arm64.txt", "k3s-airgap-images-arm64.tar.zst", "k3s"):
        status, body, _ = k3s_follow.answer(layout, f"/v1/k3s/{VERSION}/{name}")
        assert (status, body) == (200, layout.k3s_bundle(VERSION) / name)
    (tmp_path / "secret").write_text("x")
    for path in (f"/v1/k3s/{VERSION}/bundle.json", f"/v1/k3s/{VERSION}/../../../secret", "/v1/k3s/../secret",
                 "/v1/k3s/v1.30.0+k3s1/k3s-arm64", f"/v1/k3s/{VERSION}/k3s-arm64/x", f"/v1/k3s//{VERSION}/k3s",
                 "/v1/k3s/", f"/v1/k3s/{VERSION}"):
        status, body, _ = k3s_follow.answer(layout, path)
        assert status == 404 and isinstance(body, bytes), path
    os.unlink(layout.k3s_bundle(VERSION) / "k3s-arm64")
    os.symlink(tmp_path / "secret", layout.k3s_bundle(VERSION) / "k3s-arm64")
    assert k3s_follow.answer(layout, f"/v1/k3s/{VERSION}/k3s-arm64")[0] == 404   # never through a link
    layout.k3s_served.write_text('{"version": "../../etc"}')
    assert k3s_follow.answer(layout, "/v1/k3s")[0] == 503          # a record that names no version


def test_a_pushed_k3s_is_checked_before_anything_is_placed(tmp_path):
    layout = Layout(tmp_path / "jumphost")
    layout.state_dir.mkdir(parents=True)
    k3s_standin_bundle.make(layout.k3s_bundles, VERSION)
    fetched = k3s_standin_bundle.make(tmp_path / "fetched", NEWER)
    sealed = SimpleNamespace(k3s_version=NEWER)

    # A bundle with a file that does not match its checksum file: refused, nothing kept.
    damaged = shutil.copytree(fetched, tmp_path / "damaged" / NEWER)
    (damaged / "k3s-arm64").write_bytes(b"not k3s")
    with pytest.raises(BadInput, match=r"k3s-arm64: checksum mismatch"):
        bundle_install._k3s_for(layout, sealed, damaged, dry_run=False)
    # A link in place of a file is refused, not followed.
    linked = shutil.copytree(fetched, tmp_path / "linked" / NEWER)
    (linked / "k3s").unlink()
    (linked / "k3s").symlink_to(fetched / "k3s")
    with pytest.raises(BadInput, match=r"/k3s: not a regular file|cannot read it"):
        bundle_install._k3s_for(layout, sealed, linked, dry_run=False)
    # Another version than the rack bundle wants.
    with pytest.raises(BadInput, match=rf"is k3s {NEWER.replace('+', '[+]')}; the bundle wants v1.31.9"):
        bundle_install._k3s_for(layout, SimpleNamespace(k3s_version="v1.31.9+k3s1"), fetched, False)
    assert not [p for p in layout.pushed_k3s_bundles.iterdir()]     # nothing placed, no staging left

    # A dry run checks it and places nothing; the real one places it.
    assert bundle_install._k3s_for(layout, sealed, fetched, dry_run=True) == \
        [f"k3s {NEWER}: verified (dry run: not installed)"]
    assert k3s_store.versions(layout) == [VERSION] and os.listdir(layout.state_dir) == ["k3s"]
    assert bundle_install._k3s_for(layout, sealed, fetched, dry_run=False) == \
        [f"k3s {NEWER}: installed in {layout.pushed_k3s_bundles}"]
    assert k3s_store.versions(layout) == [VERSION, NEWER]
    assert k3s_store.locate(layout, NEWER) == layout.pushed_k3s_bundles / NEWER

    # Without a pushed k3s, the wanted version must be on the jumphost already.
    with pytest.raises(BadInput) as caught:
        bundle_install._k3s_for(layout, SimpleNamespace(k3s_version="v1.32.5+k3s1"), None, False)
    assert "neither in its image nor pushed" in str(caught.value) and "--k3s-bundle DIR" in caught.value.hint


def test_the_jumphost_refuses_a_pushed_k3s_that_skips_a_minor(tmp_path):
    layout = Layout(tmp_path / "jumphost")
    layout.state_dir.mkdir(parents=True)
    layout.bin_dir.mkdir(parents=True)
    (layout.bin_dir / "k3s").write_bytes(k3s_standin_bundle.standin_binary(VERSION))
    (layout.bin_dir / "k3s").chmod(0o755)
    skip = k3s_standin_bundle.make(tmp_path / "fetched", "v1.33.0+k3s1")
    with pytest.raises(BadInput, match="cannot move from v1.31 to v1.33"):
        bundle_install._k3s_for(layout, SimpleNamespace(k3s_version="v1.33.0+k3s1"), skip, False)
    assert not layout.pushed_k3s_bundles.exists()                    # refused before anything was copied
