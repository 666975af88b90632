"""Pis join their rack's cluster: the agent on a pretend Pi (found by the
serial its kernel shows) gets the agent token from the jumphost's join
service, installs k3s as an agent pointed at the jumphost, and the node
registers with the profile's labels. A Pi that lost its local
state (a netbooted Pi keeps /etc/rancher in RAM) and a replacement Pi with
the same name join again as the same node, where k3s's own random node
password would be rejected; the test shows that rejection too."""

import fcntl
import os
import shutil
import time

import pytest

from firstboot import join as join_module
from tests.doubles.secret_manager import SecretManagerDouble
from tests.machine import REPO
from tests.rack import Rack

TOKEN = b"loop-rack-token-4c9e"


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
    assert "server: https://127.0.0.2:16443" in first.path("/etc/rancher/k3s/config.yaml").read_text()
    # The Pis hold the agent token (from the join service), never the rack's token.
    assert status["steps"]["token"]["result"]["source"] == "http://127.0.0.2:6442/v1/agent-token"
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
    # k3s's own behaviour: no password file, so it makes a random one.
    config = stranger.path("/etc/rancher/k3s")
    config.mkdir(parents=True)
    (config / "token").write_bytes(TOKEN + b"\n")
    (config / "config.yaml").write_text("server: https://127.0.0.2:16443\ntoken-file: /etc/rancher/k3s/token\n"
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
    fd = process.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunk = process.stderr.read() or ""
    process.captured = getattr(process, "captured", "") + chunk
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
    rotate = rack.machine.run(["k3s", "token", "rotate", "--server", "https://127.0.0.2:16443",
                               "--token", TOKEN.decode(), "--new-token", "rotated-token-1e77"])
    assert rotate.returncode == 0, rotate.stderr
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert rack.status()["steps"]["k3s"]["result"]["changed"] == ["token"]
    assert rack.k3s_pid() != pid
    status = join(rack, pi)
    assert status["steps"]["token"]["result"]["changed"] is True
    assert status["steps"]["k3s"]["result"]["started"] == "restarted"
    assert "Node password rejected" not in pi.journal("k3s-agent.service")
    assert nodes(rack)["loop-pi-01"].status.conditions[0].status == "True"
