"""Pis join their rack's cluster: the agent on a pretend Pi (found by the
serial its kernel shows) gets the agent token from the jumphost's join
service, installs k3s as an agent pointed at the jumphost, and the node
registers with the profile's labels. A Pi that lost its local
state (a netbooted Pi keeps /etc/rancher in RAM) and a replacement Pi with
the same name join again as the same node, where k3s's own random node
password would be rejected; the test shows that rejection too."""

import base64
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request

import pytest
import yaml

from firstboot import apply, k3s
from firstboot import join as join_module
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack

TOKEN = b"loop-rack-token-4c9e"
JUMPHOST_LABEL = "node-restriction.kubernetes.io/rackboot-role"
# Pods here run on real kubelets with RACKBOOT_K3S_BUNDLE: an image of k3s's air-gap tarball.
PAUSE_IMAGE = "docker.io/rancher/mirrored-pause:3.6"


@pytest.fixture
def rack(tmp_path):
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    rack.sm = sm
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    yield rack
    rack.destroy()
    sm.stop()


def api(rack) -> str:
    """The jumphost's k3s API, at its address on the rack's bridge (tests/lib/rack.py)."""
    return f"https://{rack.machine.address}:16443"


def nodes(rack) -> dict:
    dyn = rack.kube()
    return {n.metadata.name: n for n in dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items}


def node_password_hash(rack, name: str) -> str:
    return rack.get("v1", "Secret", f"{name}.node-password.k3s", "kube-system").data["hash"]


def join(rack, pi):
    done = rack.agent(pi, role="pi")
    assert done.returncode == 0, done.stderr + rack.status_text(pi) + pi.journal("k3s-agent.service")
    return rack.status(pi)


def test_pis_join_with_their_labels(rack):
    first, second = rack.add_pi("pi1", "0b0b0b01"), rack.add_pi("pi2", "0b0b0b02")
    status = join(rack, first)
    assert status["steps"]["identify"]["result"] == {"rack": "loop", "role": "pi", "node": "loop-pi-01",
                                                     "source": "serial"}
    assert status["steps"]["apply"]["result"] == {"skipped": "the jumphost applies the rack's YAML"}
    join(rack, second)
    found = nodes(rack)
    assert set(found) == {"jumphost-loop", "loop-pi-01", "loop-pi-02"}
    labels = found["loop-pi-01"].metadata.labels
    assert labels["rackboot.dev/rack"] == "loop" and labels["rackboot.dev/role"] == "pi"
    assert labels["rackboot.dev/model"] == "pi4" and labels["example.dev/device-pool"] == "android"
    assert "example.dev/device-pool" not in found["loop-pi-02"].metadata.labels
    assert first.path("/etc/systemd/system/k3s-agent.service").read_text().count("ExecStart=/usr/local/bin/k3s agent")
    assert f"server: {api(rack)}" in first.path("/etc/rancher/k3s/config.yaml").read_text()
    # The Pis hold the agent token (from the join service), never the rack's token.
    assert status["steps"]["token"]["result"]["source"] == f"http://{rack.machine.address}:6442/v1/agent-token"
    for pi in (first, second):
        assert pi.path("/etc/rancher/k3s/token").read_bytes() == join_module.agent_token(TOKEN, "loop") + b"\n"
        assert (pi.path("/etc/rancher/k3s/token").stat().st_mode & 0o777) == 0o600
        for path in (pi.root).rglob("*"):
            if path.is_file():
                assert TOKEN not in path.read_bytes(), path
    assert rack.sm.calls == ["projects/rackboot-loop/secrets/k3s-node-token/versions/latest"]   # the jumphost's only


def test_pi_that_lost_its_state_and_a_replacement_rejoin_as_the_same_node(rack):
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    registered = node_password_hash(rack, "loop-pi-01")
    # Power cut on a netbooted Pi: /etc/rancher and /var/lib/rancher were in RAM.
    pi.power_off()
    for directory in ("/etc/rancher", "/var/lib/rancher"):
        for child in pi.path(directory).iterdir():
            shutil.rmtree(child)
    join(rack, pi)
    assert "Node password rejected" not in pi.journal("k3s-agent.service")
    # The board dies; a new one (new serial) takes its name in the profile.
    pi.destroy()
    rack.edit_profile(lambda p: p["pis"][0].update(serial="0b0b0b99"))
    replacement = rack.add_pi("pi1-new", "0b0b0b99")
    status = join(rack, replacement)
    assert status["steps"]["identify"]["result"]["node"] == "loop-pi-01"
    assert node_password_hash(rack, "loop-pi-01") == registered
    assert nodes(rack)["loop-pi-01"].status.conditions[0].status == "True"


def test_k3s_random_node_password_would_be_rejected(rack):
    """The control: what a replaced Pi meets without rackboot's derived password."""
    join(rack, rack.add_pi("pi1", "0b0b0b01"))
    stranger = rack.add_pi("stranger", "0b0b0b01")
    # k3s's own behaviour: no password file, so it makes a random one. It holds
    # the token every Pi holds (the server token would not get it this far, see
    # tests/test_k3s_tokens.py).
    config = stranger.path("/etc/rancher/k3s")
    config.mkdir(parents=True)
    (config / "token").write_bytes(join_module.agent_token(TOKEN, "loop") + b"\n")
    (config / "config.yaml").write_text(f"server: {api(rack)}\ntoken-file: /etc/rancher/k3s/token\n"
                                        "node-name: loop-pi-01\n")
    bundle = next(stranger.path("/usr/lib/rackboot/k3s").iterdir())
    agent = stranger.popen([str(bundle / "k3s"), "agent"])
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while "Node password rejected" not in seen and time.monotonic() < deadline:
            time.sleep(0.5)
            if agent.poll() is not None:
                break
            seen = _stderr_so_far(agent)
        assert "Node password rejected" in seen
    finally:
        stranger.power_off()


def _stderr_so_far(process) -> str:
    """What process wrote to its stderr so far, without waiting for more
    (read from the descriptor: a text stream's read of a non-blocking pipe
    may fail when nothing is there)."""
    fd = process.stderr.fileno()
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.captured = getattr(process, "captured", "") + b"".join(chunks).decode(errors="replace")
    return process.captured


def test_rotating_the_token_as_the_readme_says(rack, tmp_path):
    sm = rack.sm
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    # The store changes without k3s being told: the jumphost keeps its token and k3s.
    sm.add("rackboot-loop", "k3s-node-token", b"rotated-token-1e77")
    pid = rack.k3s_pid()
    assert rack.agent().returncode == 1
    assert "the k3s token changed, but this server's datastore" in rack.status()["steps"]["token"]["error"]
    assert "k3s token rotate" in rack.status_text()
    assert rack.machine.path("/etc/rancher/k3s/token").read_bytes() == TOKEN + b"\n"
    assert rack.k3s_pid() == pid
    # README: 1. rotate in k3s, 2. (stored above), 3. re-run the jumphost's agent, then the Pi's.
    rotate = rack.machine.run(["k3s", "token", "rotate", "--server", api(rack),
                               "--token", TOKEN.decode(), "--new-token", "rotated-token-1e77"])
    assert rotate.returncode == 0, rotate.stderr
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert rack.status()["steps"]["k3s"]["result"]["changed"] == ["token"]
    assert rack.k3s_pid() != pid
    # The jumphost's node password stays the one its datastore knows, though its key was rotated.
    assert rack.machine.path("/etc/rancher/node/password").read_bytes() == \
        k3s.server_node_password(TOKEN, "loop", "jumphost-loop") + b"\n"
    assert "Node password rejected" not in rack.machine.journal("k3s.service")
    assert rack.get("v1", "Node", "jumphost-loop").status.conditions[0].status == "True"
    status = join(rack, pi)
    assert status["steps"]["token"]["result"]["changed"] is True
    assert status["steps"]["k3s"]["result"]["started"] == "restarted"
    assert "Node password rejected" not in pi.journal("k3s-agent.service")
    assert nodes(rack)["loop-pi-01"].status.conditions[0].status == "True"


def kubelet_identity(tmp_path, server: str, name: str, password: bytes, token: bytes):
    """What a holder of a join token gets from k3s for a node name and its
    password (k3s's /v1-k3s/client-kubelet.crt): that node's kubelet
    identity, system:node:NAME. A client of the API with it."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(f"{server}/cacerts", context=unverified, timeout=10) as answer:
        ca = answer.read()
    request = urllib.request.Request(f"{server}/v1-k3s/client-kubelet.crt", headers={
        "Authorization": "Basic " + base64.b64encode(b"node:" + token).decode(),
        "k3s-Node-Name": name, "k3s-Node-Password": password.decode()})
    with urllib.request.urlopen(request, context=ssl.create_default_context(cadata=ca.decode()), timeout=30) as answer:
        identity = answer.read()
    (tmp_path / f"{name}.ca").write_bytes(ca)
    (tmp_path / f"{name}.pem").write_bytes(identity)
    configuration = client.Configuration()
    configuration.host, configuration.ssl_ca_cert = server, str(tmp_path / f"{name}.ca")
    configuration.cert_file = configuration.key_file = str(tmp_path / f"{name}.pem")
    return DynamicClient(client.ApiClient(configuration))


def refusal(call) -> dict:
    from kubernetes.client.exceptions import ApiException
    with pytest.raises(ApiException) as refused:
        call()
    return {"code": refused.value.status, **json.loads(refused.value.body)}


def test_the_agent_token_cannot_make_a_jumphost(rack, tmp_path):
    """Hole 2 of issue 11: the jumphost's node password is keyed by the rack
    token, and the pods with the rack's Secrets select a label that only the
    agent sets, through the API."""
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    agent_token = pi.path("/etc/rancher/k3s/token").read_bytes().strip()
    # The jumphost's Node carries the placement label, set by the agent before it applied anything.
    assert rack.get("v1", "Node", "jumphost-loop").metadata.labels[JUMPHOST_LABEL] == "jumphost"
    assert rack.status()["steps"]["apply"]["result"]["placement"] == {
        "node": "jumphost-loop", "label": f"{JUMPHOST_LABEL}=jumphost", "changed": True}
    assert apply.JUMPHOST_LABEL == JUMPHOST_LABEL
    # The jumphost's name is public; its password is not derived from it.
    password = rack.machine.path("/etc/rancher/node/password").read_bytes()
    assert password == k3s.server_node_password(TOKEN, "loop", "jumphost-loop") + b"\n"
    with pytest.raises(urllib.error.HTTPError) as refused:
        kubelet_identity(tmp_path, api(rack), "jumphost-loop", k3s.node_password("loop", "jumphost-loop"), agent_token)
    assert refused.value.code == 403 and "Node password rejected" in refused.value.read().decode()
    # Under a Pi's name (whose password is public, see firstboot/k3s.py) it is that Pi's kubelet:
    kubelet = kubelet_identity(tmp_path, api(rack), "loop-pi-01", k3s.node_password("loop", "loop-pi-01"), agent_token)
    nodes = kubelet.resources.get(api_version="v1", kind="Node")
    merge = {"content_type": "application/merge-patch+json"}
    kubelet.patch(nodes, name="loop-pi-01", body={"metadata": {"labels": {"example.dev/mine": "yes"}}}, **merge)
    assert rack.get("v1", "Node", "loop-pi-01").metadata.labels["example.dev/mine"] == "yes"
    # ... which may not claim the label, nor touch the jumphost's Node (NodeRestriction admission),
    assert refusal(lambda: kubelet.patch(nodes, name="loop-pi-01", body={
        "metadata": {"labels": {JUMPHOST_LABEL: "jumphost"}}}, **merge)) == {
        "code": 403, "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
        "message": f'nodes "loop-pi-01" is forbidden: is not allowed to modify labels: {JUMPHOST_LABEL}',
        "details": {"name": "loop-pi-01", "kind": "nodes"}}
    for labels in ({"example.dev/x": "y"}, {JUMPHOST_LABEL: None}):
        refused = refusal(lambda: kubelet.patch(nodes, name="jumphost-loop", body={"metadata": {"labels": labels}},
                                                **merge))
        assert refused["code"] == 403 and refused["message"] == \
            'nodes "jumphost-loop" is forbidden: node "loop-pi-01" is not allowed to modify node "jumphost-loop"'
    # ... nor read Secrets that no pod bound to it uses (the Node authorizer).
    secret_api = kubelet.resources.get(api_version="v1", kind="Secret")
    assert refusal(lambda: kubelet.get(secret_api, namespace="kube-system"))["code"] == 403
    refused = refusal(lambda: kubelet.get(secret_api, name="jumphost-loop.node-password.k3s", namespace="kube-system"))
    assert refused["code"] == 403 and refused["message"].endswith(
        "no relationship found between node 'loop-pi-01' and this object")
    # What it can read: the Secrets of pods bound to it, and only those.
    dyn = rack.kube()
    for name in ("for-the-pi", "for-the-jumphost"):
        dyn.create(dyn.resources.get(api_version="v1", kind="Secret"), namespace="loop-apps", body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": "dg=="}})
    for pod, node, secret in (("on-the-pi", "loop-pi-01", "for-the-pi"),
                              ("on-the-jumphost", "jumphost-loop", "for-the-jumphost")):
        dyn.create(dyn.resources.get(api_version="v1", kind="Pod"), namespace="loop-apps", body={
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
                     "volumes": [{"name": "s", "secret": {"secretName": secret}}]}})
    assert kubelet.get(secret_api, name="for-the-pi", namespace="loop-apps").data["k"] == "dg=="
    assert refusal(lambda: kubelet.get(secret_api, name="for-the-jumphost", namespace="loop-apps"))["code"] == 403
    assert rack.get("v1", "Node", "jumphost-loop").metadata.labels[JUMPHOST_LABEL] == "jumphost"


def test_a_kubelet_may_not_label_itself_for_the_jumphost(rack, tmp_path):
    """A k3s agent configured with the restricted label does not start (the
    kubelet's own check), and one that skips the check is refused by the API."""
    stranger = rack.add_pi("stranger", "0b0b0b02")
    config = stranger.path("/etc/rancher/k3s")
    config.mkdir(parents=True)
    (config / "token").write_bytes(join_module.agent_token(TOKEN, "loop") + b"\n")
    (config / "config.yaml").write_text(f"server: {api(rack)}\ntoken-file: /etc/rancher/k3s/token\n"
                                        f"node-name: loop-pi-02\nnode-label:\n  - {JUMPHOST_LABEL}=jumphost\n")
    bundle = next(stranger.path("/usr/lib/rackboot/k3s").iterdir())
    agent = stranger.popen([str(bundle / "k3s"), "agent"])
    try:
        _, stderr = agent.communicate(timeout=30)
    finally:
        stranger.power_off()
    assert agent.returncode != 0
    assert ("unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: "
            f"[{JUMPHOST_LABEL}]") in stderr
    assert "loop-pi-02" not in nodes(rack)
    if os.environ.get("RACKBOOT_K3S_BUNDLE"):
        return     # the rest speaks the stand-in's own join request
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(f"{api(rack)}/v1-k3s/standin-join", method="POST", data=json.dumps(
        {"labels": {JUMPHOST_LABEL: "jumphost"}}).encode(), headers={
        "Authorization": "Basic " + base64.b64encode(b"node:" + join_module.agent_token(TOKEN, "loop")).decode(),
        "k3s-Node-Name": "loop-pi-02", "k3s-Node-Password": k3s.node_password("loop", "loop-pi-02").decode()})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=unverified, timeout=10)
    assert refused.value.code == 403 and json.loads(refused.value.read())["message"] == (
        f'nodes "loop-pi-02" is forbidden: node "loop-pi-02" is not allowed to set the following labels: '
        f"{JUMPHOST_LABEL}")
    assert "loop-pi-02" not in nodes(rack)


def test_a_pi_of_one_rack_is_refused_by_another(rack, tmp_path):
    """Hole 3 of issue 11: two racks store the same token; a Pi of one holds
    an agent token that the other's k3s refuses, as k3s refuses a bad token."""
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    profiles = tmp_path / "profiles-b"
    shutil.copytree(REPO / "tests/profiles/loopback", profiles)
    document = yaml.safe_load((profiles / "loop.yaml").read_text())
    document.update(rack="loop-b", pis=[])
    document["jumphost"].update(hostname="jumphost-loop-b", address="127.0.0.3")
    document["k3s"]["api_port"] = 16444
    (profiles / "loop.yaml").unlink()
    (profiles / "loop-b.yaml").write_text(yaml.safe_dump(document))
    other = Rack(tmp_path / "rack-b", profiles, "loop-b", rack.sm.address, network=rack.network)   # one segment
    try:
        done = other.agent()
        assert done.returncode == 0, done.stderr + other.status_text()
        token_a = pi.path("/etc/rancher/k3s/token").read_bytes()
        assert other.machine.path("/etc/rancher/k3s/token").read_bytes() == TOKEN + b"\n"    # the same stored token
        token_b = other.machine.path("/etc/rancher/k3s/agent-token").read_bytes()
        assert token_b == join_module.agent_token(TOKEN, "loop-b") + b"\n" and token_b != token_a
        # The Pi's own k3s agent, pointed at rack B with the token it holds:
        (pi.path("/etc/rancher/k3s") / "rack-b.yaml").write_text(
            f"server: https://{other.machine.address}:16444\ntoken-file: /etc/rancher/k3s/token\nnode-name: loop-pi-01\n")
        bundle = next(pi.path("/usr/lib/rackboot/k3s").iterdir())
        agent = pi.popen([str(bundle / "k3s"), "agent", "--config", "/etc/rancher/k3s/rack-b.yaml"])
        try:
            deadline = time.monotonic() + 30
            seen = ""
            while "Unauthorized" not in seen and time.monotonic() < deadline and agent.poll() is None:
                time.sleep(0.5)
                seen = _stderr_so_far(agent)
            assert "Unauthorized" in seen
        finally:
            agent.kill()
            agent.wait()
        b_nodes = {n.metadata.name for n in other.kube().get(
            other.kube().resources.get(api_version="v1", kind="Node")).items}
        assert b_nodes == {"jumphost-loop-b"}
        # The same refusal at the door where a kubelet gets its identity: 401, as k3s answers a bad token.
        with pytest.raises(urllib.error.HTTPError) as refused:
            kubelet_identity(tmp_path, f"https://{other.machine.address}:16444", "loop-pi-01",
                             k3s.node_password("loop-b", "loop-pi-01"), token_a.strip())
        assert refused.value.code == 401
    finally:
        other.destroy()


UNREACHABLE = "node.kubernetes.io/unreachable"


def ready_condition(rack, name: str):
    [ready] = [c for c in rack.get("v1", "Node", name).status.conditions if c.type == "Ready"]
    return ready


def eventually(check, within: float = 120) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_powered_off_pi_goes_not_ready_and_comes_back(rack):
    """A node is Ready only while its kubelet posts its status: a Pi that
    loses power goes NotReady (Ready Unknown, unreachable taints) after the
    controller manager's grace period (40 s; the stand-in's
    K3S_STANDIN_NODE_GRACE shortens it), and Ready again when it boots. The
    jumphost's run meanwhile is unaffected: its ready step waits for its own
    node, and nothing in apply or report depends on the Pis' nodes."""
    m = rack.machine
    m.set_service_environment(K3S_STANDIN_NODE_GRACE=6, K3S_STANDIN_NODE_STATUS_FREQUENCY=0.5)
    assert m.run(["systemctl", "restart", "k3s.service"]).returncode == 0
    pi = rack.add_pi("pi1", "0b0b0b01")
    pi.set_service_environment(K3S_STANDIN_NODE_STATUS_FREQUENCY=0.5)
    join(rack, pi)
    assert eventually(lambda: ready_condition(rack, "loop-pi-01").status == "True")
    pi.power_off()
    assert eventually(lambda: ready_condition(rack, "loop-pi-01").status == "Unknown")
    ready = ready_condition(rack, "loop-pi-01")
    assert (ready.reason, ready.message) == ("NodeStatusUnknown", "Kubelet stopped posting node status.")
    taints = rack.get("v1", "Node", "loop-pi-01").spec.taints
    assert sorted((t.key, t.effect) for t in taints) == [(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")]
    assert ready_condition(rack, "jumphost-loop").status == "True"        # its own kubelet posts on
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    status = rack.status()
    assert {name: step["outcome"] for name, step in status["steps"].items()} == {
        "identify": "done", "serve": "done", "token": "done", "k3s": "done", "ready": "done", "apply": "done",
        "report": "done"}
    assert status["steps"]["report"]["result"]["errors"] == {}
    assert ready_condition(rack, "loop-pi-01").status == "Unknown"
    # Power is back: the Pi boots (a power cut forgot systemd's environment) and its agent runs.
    pi.set_service_environment(K3S_STANDIN_NODE_STATUS_FREQUENCY=0.5)
    join(rack, pi)
    assert eventually(lambda: ready_condition(rack, "loop-pi-01").status == "True")
    assert not rack.get("v1", "Node", "loop-pi-01").spec.taints
