"""Tokens as k3s checks them, through rackboot's own steps on a pretend rack.

k3s (pkg/daemons/control/deps genUsers, pkg/server/handlers) keeps its join
credentials in server/cred/passwd: user server with the server token, user
node with the agent token when one is set (rackboot always sets one: the
jumphost's agent-token-file). A joining agent always presents user node, so
the server token is refused to a Pi. The datastore's bootstrap data is
stored under the server token (pkg/cluster storage.go): after `k3s token
rotate` only the new token starts the server, at every restart."""

import base64
import os
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from firstboot import join as join_module
from firstboot import k3s

from tests import test_pi_join
from tests.doubles import k3s_standin_bundle
from tests.lib.machine import Machine
from tests.lib.rack import VERSION
from tests.test_pi_join import TOKEN, api, eventually, join, ready_condition

rack = test_pi_join.rack      # the same fixture: a pretend rack whose jumphost reached rack ready
pytestmark = pytest.mark.machine     # (built in test_pi_join, out of the tier rules' sight)

NEW_TOKEN = b"loop-rack-token-rotated-77c0"
SERVER = "/var/lib/rancher/k3s/server"


def kubelet_certificate(user: bytes, password: bytes, name: str, node_password: bytes, server: str) -> int:
    """The HTTP status k3s answers a request for a kubelet's identity
    (/v1-k3s/client-kubelet.crt) made with these basic-auth credentials."""
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(f"{server}/v1-k3s/client-kubelet.crt", headers={
        "Authorization": "Basic " + base64.b64encode(user + b":" + password).decode(),
        "k3s-Node-Name": name, "k3s-Node-Password": node_password.decode()})
    try:
        with urllib.request.urlopen(request, context=unverified, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def passwd_of(machine) -> dict[str, list[str]]:
    """k3s's server/cred/passwd: user -> [password, user, uid, role]."""
    return {line.split(",")[1]: line.split(",") for line in machine.path(f"{SERVER}/cred/passwd").read_text().splitlines()}


def test_k3s_keeps_the_tokens_where_k3s_does(rack):
    m = rack.machine
    agent_token = join_module.agent_token(TOKEN, "loop")
    passwd = passwd_of(m)
    assert passwd["server"] == [TOKEN.decode(), "server", "server", "k3s:server"]
    assert passwd["node"] == [agent_token.decode(), "node", "node", "k3s:agent"]
    ca_hash = m.path(f"{SERVER}/token").read_text().split("::")[0]
    assert m.path(f"{SERVER}/token").read_bytes() == ca_hash.encode() + b"::server:" + TOKEN + b"\n"
    assert m.path(f"{SERVER}/agent-token").read_bytes() == ca_hash.encode() + b"::node:" + agent_token + b"\n"
    assert str(m.path(f"{SERVER}/node-token").readlink()) == f"{SERVER}/token"


def test_a_pi_presenting_the_server_token_is_refused(rack):
    """With an agent token set, user node has that token only: the rack's
    (server) token does not join a Pi, in short or secure form, and user
    server may not use the agents' endpoints at all."""
    pi_name, password = "loop-pi-01", k3s.node_password("loop", "loop-pi-01")
    agent_token = join_module.agent_token(TOKEN, "loop")
    assert kubelet_certificate(b"node", TOKEN, pi_name, password, api(rack)) == 401
    assert kubelet_certificate(b"server", TOKEN, pi_name, password, api(rack)) == 403
    assert kubelet_certificate(b"node", agent_token, pi_name, password, api(rack)) == 200
    # A Pi whose token file holds the rack's token (short, then as k3s writes it in server/token):
    secure = rack.machine.path(f"{SERVER}/token").read_bytes()
    for number, token in enumerate((TOKEN + b"\n", secure)):
        stranger = rack.add_pi(f"stranger-{number}", "0b0b0b02")
        config = stranger.path("/etc/rancher/k3s")
        config.mkdir(parents=True)
        (config / "token").write_bytes(token)
        (config / "config.yaml").write_text(f"server: {api(rack)}\ntoken-file: /etc/rancher/k3s/token\n"
                                            f"node-name: {pi_name}\n")
        stranger.path("/etc/rancher/node").mkdir(parents=True)
        stranger.path("/etc/rancher/node/password").write_bytes(password + b"\n")
        bundle = next(stranger.path("/usr/lib/rackboot/k3s").iterdir())
        agent = stranger.popen([str(bundle / "k3s"), "agent"])
        try:
            seen = _wait_for_output(agent, "401")
        finally:
            stranger.destroy()
            rack.machines.remove(stranger)
        assert "401 Unauthorized" in seen
        assert pi_name not in {n.metadata.name for n in rack.kube().get(
            rack.kube().resources.get(api_version="v1", kind="Node")).items}


def _wait_for_output(process, text: str, within: float = 60) -> str:
    """process's stderr once text is in it (or it ended, or within seconds passed)."""
    os.set_blocking(process.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + within
    while text.encode() not in seen and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        try:
            seen += os.read(process.stderr.fileno(), 65536)
        except BlockingIOError:
            pass
    return seen.decode(errors="replace")


def test_a_rotation_survives_two_server_restarts_and_the_pi_rejoins(rack):
    """README, 'Rotating the token': rotate in k3s, store the new token, re-run
    the jumphost's agent (k3s restarts with it), and the Pis'. The jumphost
    then boots again (a second start of k3s on the same datastore), and a
    store rolled back to the old token is refused, not given to k3s."""
    m = rack.machine
    pi = rack.add_pi("pi1", "0b0b0b01")
    join(rack, pi)
    rotate = m.run(["k3s", "token", "rotate", "--server", api(rack), "--token", TOKEN.decode(),
                    "--new-token", NEW_TOKEN.decode()])
    assert rotate.returncode == 0, rotate.stderr
    assert NEW_TOKEN in m.path(f"{SERVER}/token").read_bytes()
    rack.sm.add("rackboot-loop", "k3s-node-token", NEW_TOKEN)
    # Restart 1: the agent's run, with the new token and the agent token derived from it.
    pid = rack.k3s_pid()
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert rack.status()["steps"]["k3s"]["result"]["changed"] == ["token"] and rack.k3s_pid() != pid
    new_agent_token = join_module.agent_token(NEW_TOKEN, "loop")
    assert m.path("/etc/rancher/k3s/agent-token").read_bytes() == new_agent_token + b"\n"
    pi_name, password = "loop-pi-01", k3s.node_password("loop", "loop-pi-01")
    old_agent_token = pi.path("/etc/rancher/k3s/token").read_bytes().strip()
    assert old_agent_token == join_module.agent_token(TOKEN, "loop")
    assert kubelet_certificate(b"node", old_agent_token, pi_name, password, api(rack)) == 401
    assert kubelet_certificate(b"node", TOKEN, pi_name, password, api(rack)) == 401
    # Restart 2: the jumphost boots again; k3s starts on the same datastore.
    m.power_off()
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert {s["outcome"] for s in rack.status()["steps"].values()} == {"done"}
    journal = m.journal("k3s.service")
    assert "bootstrap data already found" not in journal and "Node password rejected" not in journal
    assert ready_condition(rack, "jumphost-loop").status == "True"
    # The Pi re-joins with the new agent token, from the join service.
    status = join(rack, pi)
    assert status["steps"]["token"]["result"]["changed"] is True
    assert pi.path("/etc/rancher/k3s/token").read_bytes() == new_agent_token + b"\n"
    assert "Node password rejected" not in pi.journal("k3s-agent.service")
    assert eventually(lambda: ready_condition(rack, pi_name).status == "True")
    # The store rolled back to the old token: the token step refuses it, k3s keeps running.
    rack.sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    pid = rack.k3s_pid()
    assert rack.agent().returncode == 1
    assert "the k3s token changed, but this server's datastore" in rack.status()["steps"]["token"]["error"]
    assert m.path("/etc/rancher/k3s/token").read_bytes() == NEW_TOKEN + b"\n" and rack.k3s_pid() == pid


def test_k3s_refuses_to_start_with_the_token_it_was_rotated_from(rack):
    """What the token step guards against: k3s itself, given the old token
    after a rotation, does not start on its datastore."""
    m = rack.machine
    rotate = m.run(["k3s", "token", "rotate", "--server", api(rack), "--token", TOKEN.decode(),
                    "--new-token", NEW_TOKEN.decode()])
    assert rotate.returncode == 0, rotate.stderr
    assert m.run(["systemctl", "stop", "k3s.service"]).returncode == 0
    server = m.run(["k3s", "server"], timeout=60)       # config.yaml names the old token's file
    assert server.returncode != 0
    assert "bootstrap data already found and encrypted with different token" in server.stderr
    assert TOKEN.decode() not in server.stderr + server.stdout


def k3s_binary(directory):
    """The k3s to run: the real bundle's (RACKBOOT_K3S_BUNDLE), else the stand-in, written into directory."""
    if k3s_standin_bundle.real_bundle():
        return k3s_standin_bundle.real_bundle() / "k3s"
    (directory / "k3s").write_bytes(k3s_standin_bundle.standin_binary(VERSION))
    (directory / "k3s").chmod(0o755)
    return directory / "k3s"


def test_without_an_agent_token_user_node_follows_the_server_token(tmp_path):
    """k3s alone, no --agent-token: user node has the server's password,
    agent-token links to token, and a rotation moves both (tokenRotate: "If
    the agent token is the same a server, we need to change both").
    Restarted with the new token, k3s refuses the old one to agents;
    restarted with the old one, it does not start."""
    binary = k3s_binary(tmp_path)
    machine = Machine(tmp_path / "machine", "console=ttyS0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url, first, second = f"https://{machine.address}:{port}", "first-token-0a1", "second-token-9f2"

    def server(token: str, wait: bool = True):
        argv = [str(binary), "server", f"--https-listen-port={port}", "--node-name=solo",
                f"--node-ip={machine.address}", f"--token={token}"]
        if not wait:
            return machine.run(argv, timeout=60)
        process = machine.popen(argv)
        assert eventually(lambda: process.poll() is not None or answers())
        assert process.poll() is None, process.stderr.read()

    def answers() -> bool:
        try:
            return kubelet_certificate(b"nobody", b"nothing", "solo", b"", url) == 401
        except urllib.error.URLError:
            return False

    def joins(token: str) -> int:
        return kubelet_certificate(b"node", token.encode(), "solo-agent", b"solo-agent-password", url)
    try:
        server(first)
        assert passwd_of(machine)["node"][0] == passwd_of(machine)["server"][0] == first
        assert str(machine.path(f"{SERVER}/agent-token").readlink()) == f"{SERVER}/token"
        assert joins(first) == 200
        rotate = machine.run([str(binary), "token", "rotate", "--server", url, "--token", first, "--new-token", second])
        assert rotate.returncode == 0, rotate.stderr
        assert passwd_of(machine)["node"][0] == passwd_of(machine)["server"][0] == second
        machine.power_off()
        server(second)
        assert (joins(second), joins(first)) == (200, 401)
        machine.power_off()
        refused = server(first, wait=False)
        assert refused.returncode != 0
        assert "bootstrap data already found and encrypted with different token" in refused.stderr
    finally:
        machine.destroy()
