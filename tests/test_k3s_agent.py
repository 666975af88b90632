"""The agent's whole run on a pretend jumphost: token from the Secret Manager
double, k3s installed from the bundle (the stand-in, or real k3s with
RACKBOOT_K3S_BUNDLE) and started through systemctl, the API ready, the rack's
YAML and Secrets applied, pruned, and a second run that changes nothing.
Everything is read back through the real kubernetes client."""

import base64
import os
import shutil
from pathlib import Path

import pytest
import yaml

from firstboot import k3s
from tests.doubles import k3s_standin_bundle
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import UPGRADE_BUNDLE_ENV, VERSION, Rack

TOKEN = b"rackboot-test-token-must-not-leak-7f3a"
# The files that hold the token by design: rackboot's token-file, and where
# k3s itself keeps it (pkg/daemons/control/deps: genUsers writes
# server/cred/passwd as "TOKEN,server,server,k3s:server"; the server writes
# server/token as K10<ca hash>::server:TOKEN, node-token linking to it).
# Not the datastore: k3s keeps its bootstrap data there encrypted with a key
# derived from the token (pkg/cluster/encrypt.go), never the token itself, so
# the token found there came through the API, a leak. server/agent-token
# holds the agent token only.
TOKEN_FILES = ("/etc/rancher/k3s/token", "/var/lib/rancher/k3s/server/token",
               "/var/lib/rancher/k3s/server/node-token", "/var/lib/rancher/k3s/server/cred/passwd")


@pytest.fixture
def secret_manager():
    sm = SecretManagerDouble()
    sm.add("rackboot-example", "k3s-node-token", TOKEN)
    host = sm.start()
    yield sm, host
    sm.stop()


@pytest.fixture
def rack(tmp_path, secret_manager):
    sm, host = secret_manager
    rack = Rack(tmp_path, REPO / "rack-profiles", "example", host)
    rack.sm = sm
    yield rack
    rack.destroy()


def every_file(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def contents(path: Path) -> bytes:
    """A file's bytes, or none if it went meanwhile (a real k3s's and containerd's temporary files)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_jumphost_reaches_rack_ready(rack):
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    status = rack.status()
    assert {name: step["outcome"] for name, step in status["steps"].items()} == {
        "identify": "done", "serve": "done", "token": "done", "k3s": "done", "ready": "done", "apply": "done", "report": "done"}
    m = rack.machine
    # Installed as k3s's install.sh would: binary, unit, config, token file, node password.
    bundle = m.path(f"/usr/lib/rackboot/k3s/{VERSION}")
    assert m.path("/usr/local/bin/k3s").read_bytes() == (bundle / "k3s").read_bytes()
    for tool in ("kubectl", "crictl", "ctr"):   # linked, unless the system has its own (as install.sh does)
        if not shutil.which(tool, path="/usr/bin:/bin"):
            assert m.path(f"/usr/local/bin/{tool}").readlink() == Path("k3s")
    rendered = m.path("/usr/share/rackboot/racks/example/jumphost/rootfs/etc/rancher/k3s/config.yaml")
    assert m.path("/etc/rancher/k3s/config.yaml").read_bytes() == rendered.read_bytes()
    for secret_file in ("/etc/rancher/k3s/token", "/etc/rancher/node/password", "/etc/rancher/k3s/config.yaml"):
        assert m.path(secret_file).stat().st_mode & 0o777 == 0o600, secret_file
    assert m.path("/etc/rancher/k3s/token").read_bytes() == TOKEN + b"\n"
    # The jumphost's node password is keyed by the rack token: its public name does not give it.
    password = m.path("/etc/rancher/node/password").read_bytes()
    assert password == k3s.server_node_password(TOKEN, "example", "jumphost-example") + b"\n"
    assert password != k3s.node_password("example", "jumphost-example") + b"\n"
    assert "ExecStart=/usr/local/bin/k3s server" in m.path("/etc/systemd/system/k3s.service").read_text()
    assert m.path("/etc/systemd/system/multi-user.target.wants/k3s.service").is_symlink()
    assert m.path("/var/lib/rancher/k3s/agent/images/k3s-airgap-images-amd64.tar.zst").exists()
    assert status["steps"]["k3s"]["result"]["changed"] == ["binary", "images", "config", "node-password",
                                                            "token", "unit"]
    # The cluster: the node with the profile's labels, the rack's YAML applied with our labels.
    node = rack.get("v1", "Node", "jumphost-example")
    assert node.metadata.labels["rackboot.dev/rack"] == "example"
    # Placed through the API, with a label no kubelet may set on itself.
    assert node.metadata.labels["node-restriction.kubernetes.io/rackboot-role"] == "jumphost"
    assert status["steps"]["apply"]["result"]["placement"] == {
        "node": "jumphost-example", "label": "node-restriction.kubernetes.io/rackboot-role=jumphost", "changed": True}
    assert node.metadata.labels["example.dev/owner"] == "lab-team"
    info = rack.get("v1", "ConfigMap", "rack-info", "rack-apps")
    assert dict(info.data) == {"rack": "example", "owner": "rackboot"}
    assert info.metadata.labels["app.kubernetes.io/managed-by"] == "rackboot"
    assert info.metadata.managedFields[0].manager == "rackboot"
    assert rack.get("v1", "Service", "metadata", "rack-apps").spec.ports[0].port == 80
    assert status["steps"]["apply"]["result"]["applied"] == [
        "Namespace rack-apps", "ConfigMap rack-apps/rack-info", "Service rack-apps/metadata"]
    # The token is in the token file and nowhere else: not in any other file of the
    # machine, the agent's output, k3s's journal or the status.
    outputs = done.stdout + done.stderr + m.journal("k3s.service") + rack.status_text()
    assert TOKEN.decode() not in outputs
    # k3s took every key of the rendered config: it logs "Unknown flag" for one it skips.
    assert "Unknown flag" not in m.journal("k3s.service")
    allowed = {m.path(p) for p in TOKEN_FILES}
    leaks = [p for p in every_file(m.root) if p not in allowed and TOKEN in contents(p)]
    assert leaks == []


def test_second_run_changes_nothing(rack):
    assert rack.agent().returncode == 0
    pid = rack.k3s_pid()
    version = rack.get("v1", "ConfigMap", "rack-info", "rack-apps").metadata.resourceVersion
    again = rack.agent()
    assert again.returncode == 0, again.stderr
    result = rack.status()["steps"]["k3s"]["result"]
    assert result["changed"] == [] and result["started"] == "unchanged"
    assert rack.k3s_pid() == pid                                     # k3s was not restarted
    assert rack.get("v1", "ConfigMap", "rack-info", "rack-apps").metadata.resourceVersion == version
    assert rack.status()["steps"]["apply"]["result"]["pruned"] == []
    assert rack.status()["steps"]["apply"]["result"]["placement"]["changed"] is False


def environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in entries if e)


def test_a_rewritten_k3s_unit_is_the_one_k3s_runs_under(rack):
    """systemd runs a unit as it loaded it, until it is reloaded. A k3s unit
    that differs from the agent's (an earlier image's: here one more
    variable) is rewritten and k3s restarted under the new one, loaded; k3s
    gets its unit's environment, none of the agent's."""
    assert rack.agent().returncode == 0
    m = rack.machine
    unit = m.path("/etc/systemd/system/k3s.service")
    unit.write_text(unit.read_text().replace("KillMode=process\n", "KillMode=process\nEnvironment=OLD_UNIT=1\n"))
    assert m.run(["systemctl", "daemon-reload"]).returncode == 0
    assert m.run(["systemctl", "restart", "k3s.service"]).returncode == 0     # waits for READY=1
    assert environ_of(rack.k3s_pid())["OLD_UNIT"] == "1"
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    result = rack.status()["steps"]["k3s"]["result"]
    assert result["changed"] == ["unit"] and result["started"] == "restarted"
    assert not m.need_daemon_reload("k3s.service")
    env = environ_of(rack.k3s_pid())
    assert "OLD_UNIT" not in env
    assert not {"SECRET_MANAGER_EMULATOR_HOST", "RACKBOOT_PROFILES", "PYTHONPATH"} & set(env)


def test_newer_bundle_upgrades_and_restarts(rack):
    assert rack.agent().returncode == 0
    pid = rack.k3s_pid()
    if k3s_standin_bundle.real_bundle() and not os.environ.get(UPGRADE_BUNDLE_ENV):
        pytest.skip(f"needs two k3s versions: with RACKBOOT_K3S_BUNDLE, set {UPGRADE_BUNDLE_ENV} to a later one")
    newer = rack.add_upgrade_bundle(rack.machine, "v1.31.5+k3s1")
    rack.edit_profile(lambda p: p["k3s"].update(version=newer))
    done = rack.agent()
    assert done.returncode == 0, done.stderr
    result = rack.status()["steps"]["k3s"]["result"]
    assert result["changed"] == ["binary", "images"] and result["started"] == "restarted"
    assert rack.k3s_pid() != pid
    version = rack.machine.run(["k3s", "--version"]).stdout
    assert newer in version
    node = rack.get("v1", "Node", "jumphost-example")
    assert node.status.nodeInfo.kubeletVersion == newer
    assert node.metadata.labels["node-restriction.kubernetes.io/rackboot-role"] == "jumphost"   # k3s keeps it
    # The datastore survived the restart: what was applied is still there.
    assert rack.get("v1", "ConfigMap", "rack-info", "rack-apps").data["owner"] == "rackboot"


def test_missing_bundle_version_fails_k3s_step_naming_it(rack):
    rack.edit_profile(lambda p: p["k3s"].update(version="v1.32.0+k3s1"))
    done = rack.agent()
    assert done.returncode == 1
    text = rack.status_text()
    assert "k3s        failed" in text
    assert "k3s v1.32.0+k3s1: not on this machine" in text and f"it has {VERSION}" in text
    assert "hint: push it with the rack's bundle (./build.py push PROFILE --to HOST --k3s-bundle DIR" in text


def test_corrupt_bundle_fails_naming_the_file(rack):
    binary = rack.machine.path(f"/usr/lib/rackboot/k3s/{VERSION}/k3s")
    binary.write_bytes(binary.read_bytes() + b"\n# flipped")
    assert rack.agent().returncode == 1
    assert f"{VERSION}/k3s: does not match sha256sum-amd64.txt" in rack.status()["steps"]["k3s"]["error"]
    assert not rack.machine.path("/usr/local/bin/k3s").exists()


def test_removed_objects_are_pruned_and_others_left_alone(rack):
    assert rack.agent().returncode == 0
    dyn = rack.kube()
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    dyn.create(configmaps, namespace="rack-apps",
               body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "made-by-hand"}, "data": {}})
    # rackboot's labels, but another rack's (a jumphost disk moved between racks):
    # this rack's agent does not own it, so it must not prune it.
    dyn.create(configmaps, namespace="rack-apps", body={
        "apiVersion": "v1", "kind": "ConfigMap", "data": {},
        "metadata": {"name": "another-racks", "labels": {"app.kubernetes.io/managed-by": "rackboot",
                                                         "rackboot.dev/rack": "skolo-rack9"}}})
    hello = rack.profiles / "kube/example/10-hello.yaml"
    hello.write_text(hello.read_text().split("---")[0])     # the Service is gone from the profile
    done = rack.agent()
    assert done.returncode == 0, done.stderr
    assert rack.status()["steps"]["apply"]["result"]["pruned"] == ["Service rack-apps/metadata"]
    services = dyn.resources.get(api_version="v1", kind="Service")
    assert [s.metadata.name for s in dyn.get(services, namespace="rack-apps").items] == []
    assert dyn.get(configmaps, name="made-by-hand", namespace="rack-apps").metadata.name == "made-by-hand"
    assert dyn.get(configmaps, name="another-racks", namespace="rack-apps").metadata.name == "another-racks"


def test_secrets_come_from_their_references_and_never_touch_disk(rack):
    value = b'{"type": "service_account", "private_key": "----- never on disk -----"}'
    wrapped = yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                              "data": {"key.json": base64.b64encode(b"wrapped-value-9b1").decode()}}).encode()
    rack.sm.add("rackboot-example", "metadata-sa", value)
    rack.sm.add("rackboot-example", "old-style", wrapped)
    rack.edit_profile(lambda p: p.update(secrets=[
        {"name": "metadata-sa", "namespace": "rack-apps",
         "data": {"key.json": "sm://rackboot-example/metadata-sa",
                  "old.json": {"ref": "sm://rackboot-example/old-style", "key": "key.json"}}}]))
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    secret = rack.get("v1", "Secret", "metadata-sa", "rack-apps")
    assert base64.b64decode(secret.data["key.json"]) == value
    assert base64.b64decode(secret.data["old.json"]) == b"wrapped-value-9b1"
    assert secret.metadata.labels["rackboot.dev/rack"] == "example"
    assert rack.status()["steps"]["apply"]["result"]["secrets"] == ["rack-apps/metadata-sa"]
    # The values went to the API only: on the machine, the sole copy is k3s's datastore.
    datastore = rack.machine.path("/var/lib/rancher/k3s/server/db")
    for path in every_file(rack.machine.root):
        if datastore not in path.parents:
            content = contents(path)
            assert b"never on disk" not in content and b"wrapped-value-9b1" not in content, path


def test_malformed_manifest_fails_apply_naming_file_and_document(rack):
    """`check` refuses such a file (tests/test_manifest_check.py); the agent
    still names it should one reach a machine: a file changed after the build."""
    bad = rack.profiles / "kube/example/20-bad.yaml"
    fine = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine, namespace: rack-apps}\n"
    bad.write_text(fine)
    rack.rebuild()
    bad.write_text(fine + "---\n- just\n- a list\n")
    done = rack.agent()
    assert done.returncode == 2
    text = rack.status_text()
    assert "apply      failed" in text
    assert f"{bad}: document 2 is not a mapping" in text
    assert rack.status()["failed"] == "apply"


def test_document_the_api_refuses_is_reported(rack):
    bad = rack.profiles / "kube/example/20-orphan.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: orphan, namespace: no-such-ns}\n")
    rack.rebuild()
    assert rack.agent().returncode == 2
    error = rack.status()["steps"]["apply"]["error"]
    assert error.startswith(f"{bad}: document 1 (ConfigMap no-such-ns/orphan): the API refused it (404)")
    assert 'namespaces "no-such-ns" not found' in error


@pytest.mark.skipif(bool(k3s_standin_bundle.real_bundle()),
                    reason="holds the node's kubelet back (K3S_STANDIN_KUBELET_DELAY), which only the stand-in can")
def test_ready_waits_for_the_node_and_times_out_naming_it(rack):
    """The ready step waits for the jumphost's node to be Ready, which it is
    only once its kubelet posts its status: one that never does fails the
    step, naming the node and its condition; one that is late is waited for."""
    m = rack.machine
    m.set_service_environment(K3S_STANDIN_KUBELET_DELAY="never")
    done = rack.agent(RACKBOOT_READY_TIMEOUT=3)
    assert done.returncode == 1
    status = rack.status()
    assert status["failed"] == "ready"
    assert status["steps"]["ready"]["error"] == "k3s is not ready after 3 s: node jumphost-example is not Ready (False)"
    assert status["steps"]["ready"]["hint"].startswith("journalctl -u k3s says why")
    assert status["steps"]["report"]["result"]["errors"] == {"ready": status["steps"]["ready"]["error"]}
    m.set_service_environment(K3S_STANDIN_KUBELET_DELAY=3)
    assert m.run(["systemctl", "restart", "k3s.service"]).returncode == 0
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert rack.get("v1", "Node", "jumphost-example").status.conditions[0].status == "True"


def test_what_operators_add_by_hand_survives_and_rackboots_fields_come_back(rack):
    """The agent force-applies (server-side apply) only the fields its rack's
    YAML sets: a label, an annotation or a data key an operator adds with
    kubectl (another field manager) stays through the agent's next run, while
    a field the YAML sets, changed by hand, is set back (README, "What the
    agent owns")."""
    assert rack.agent().returncode == 0
    dyn = rack.kube()
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    dyn.patch(configmaps, name="rack-info", namespace="rack-apps", field_manager="kubectl-edit",
              content_type="application/merge-patch+json",
              body={"metadata": {"labels": {"team": "infra"}, "annotations": {"note": "by hand"}},
                    "data": {"owner": "someone", "extra": "kept"}})
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    info = dyn.get(configmaps, name="rack-info", namespace="rack-apps")
    assert info.metadata.labels["team"] == "infra"
    assert info.metadata.annotations["note"] == "by hand"
    assert info.data["extra"] == "kept"
    assert info.data["owner"] == "rackboot"          # the rack's YAML says so
    managers = {entry.manager for entry in info.metadata.managedFields}
    assert managers == {"rackboot", "kubectl-edit"}
