"""The join service (firstboot/join.py) over real HTTP on the loopback: it
answers only its rack's subnet, says 503 until the jumphost has the agent
token, never logs the token; a Pi's fetch waits for it and fails clearly."""

import ipaddress
import socket
import threading
import time
import types
import urllib.error
import urllib.request

import pytest

from firstboot import join
from firstboot.errors import RackbootError

RACK_TOKEN = b"rack-token-for-join-tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def profile(subnet: str, port: int):
    return types.SimpleNamespace(
        rack="loop", network=types.SimpleNamespace(subnet=ipaddress.IPv4Network(subnet)),
        jumphost=types.SimpleNamespace(address=ipaddress.IPv4Address("127.0.0.1")),
        netboot=types.SimpleNamespace(join_port=port))


@pytest.fixture
def service(tmp_path):
    def start(subnet: str):
        rack = profile(subnet, free_port())
        token_file = tmp_path / "agent-token"
        threading.Thread(target=join.serve_forever, args=(rack, token_file), daemon=True).start()
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", rack.netboot.join_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        return rack, token_file
    return start


def get(rack, path=join.PATH):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rack.netboot.join_port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_agent_token_is_derived_and_changes_with_the_rack_token():
    token = join.agent_token(RACK_TOKEN)
    assert token.startswith(b"rackboot-agent-") and RACK_TOKEN not in token
    assert join.agent_token(RACK_TOKEN) == token and join.agent_token(b"rotated") != token


def test_serves_the_rack_subnet_once_the_token_is_there(service, capfd):
    rack, token_file = service("127.0.0.0/8")
    status, body = get(rack)
    assert status == 503 and b"no agent token yet" in body
    token_file.write_bytes(join.agent_token(RACK_TOKEN) + b"\n")
    assert get(rack) == (200, join.agent_token(RACK_TOKEN) + b"\n")
    assert get(rack, "/v1/other")[0] == 404
    assert join.fetch(rack, timeout=5) == join.agent_token(RACK_TOKEN)
    logged = capfd.readouterr()
    assert "GET /v1/agent-token" in logged.err and join.agent_token(RACK_TOKEN).decode() not in logged.err + logged.out


def test_refuses_addresses_outside_the_rack(service):
    rack, token_file = service("10.77.0.0/24")
    token_file.write_bytes(b"secret-agent-token\n")
    status, body = get(rack)
    assert status == 403 and b"127.0.0.1 is not in the rack's subnet 10.77.0.0/24" in body
    with pytest.raises(RackbootError, match="refused this Pi"):
        join.fetch(rack, timeout=5)


def test_fetch_waits_for_a_jumphost_that_comes_up_later(tmp_path):
    rack = profile("127.0.0.0/8", free_port())
    token_file = tmp_path / "agent-token"
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 2:    # the jumphost comes up while the Pi waits
            token_file.write_bytes(b"late-agent-token\n")
            threading.Thread(target=join.serve_forever, args=(rack, token_file), daemon=True).start()
        time.sleep(0.2)

    assert join.fetch(rack, timeout=60, sleep=sleep) == b"late-agent-token"
    assert len(waits) >= 2


def test_fetch_gives_up_naming_the_jumphost(tmp_path):
    rack = profile("127.0.0.0/8", free_port())      # nothing listens there
    with pytest.raises(RackbootError) as failed:
        join.fetch(rack, timeout=0.5, sleep=lambda s: time.sleep(0.1))
    assert f"no agent token from the jumphost at http://127.0.0.1:{rack.netboot.join_port}/v1/agent-token" in str(failed.value)
    assert "systemctl status rackboot-join" in failed.value.hint
