"""The join service (firstboot/join.py) over real HTTP on the loopback: it
answers only its rack's subnet, says 503 until the jumphost has the agent
token, never logs the token; a Pi's fetch waits for it and fails clearly."""

import http.client
import io
import ipaddress
import socket
import struct
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

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
    token = join.agent_token(RACK_TOKEN, "loop")
    assert token.startswith(b"rackboot-agent-") and RACK_TOKEN not in token
    assert join.agent_token(RACK_TOKEN, "loop") == token and join.agent_token(b"rotated", "loop") != token


def test_racks_with_the_same_stored_token_get_different_agent_tokens():
    """Every rack stores the same token (hot-swappable jumphosts); the rack's
    name in the derivation keeps one rack's agent token out of the others."""
    tokens = {rack: join.agent_token(RACK_TOKEN, rack) for rack in ("skolo-rack4", "skolo-rack5", "loop")}
    assert len(set(tokens.values())) == 3
    # Fields are separated, so names cannot be shifted into one another.
    assert join.agent_token(RACK_TOKEN, "ab") != join.agent_token(RACK_TOKEN, "a\0b")


def test_serves_the_rack_subnet_once_the_token_is_there(service, capfd):
    rack, token_file = service("127.0.0.0/8")
    status, body = get(rack)
    assert status == 503 and b"no agent token yet" in body
    token_file.write_bytes(join.agent_token(RACK_TOKEN, "loop") + b"\n")
    assert get(rack) == (200, join.agent_token(RACK_TOKEN, "loop") + b"\n")
    assert get(rack, "/v1/other")[0] == 404
    assert join.fetch(rack, timeout=5) == join.agent_token(RACK_TOKEN, "loop")
    logged = capfd.readouterr()
    assert "GET /v1/agent-token" in logged.err and join.agent_token(RACK_TOKEN, "loop").decode() not in logged.err + logged.out


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


# --- under load from the rack network ------------------------------------------
# Loopback stands in for the rack network: on Linux every 127/8 address is
# the host's, so the join service listens on 127.77.0.8 for the subnet
# 127.77.0.0/24, a Pi connects from 127.77.0.50 and outsiders from 127.78.x.y.
# Nothing leaves the host.

JUMPHOST, SUBNET, INSIDE = "127.77.0.8", "127.77.0.0/24", "127.77.0.50"
LOADED_TOKEN = b"rackboot-agent-under-load"


@pytest.fixture
def loaded(tmp_path):
    with socket.socket() as probe:
        probe.bind((JUMPHOST, 0))
        port = probe.getsockname()[1]
    rack = types.SimpleNamespace(
        rack="loop", network=types.SimpleNamespace(subnet=ipaddress.IPv4Network(SUBNET)),
        jumphost=types.SimpleNamespace(address=ipaddress.IPv4Address(JUMPHOST)),
        netboot=types.SimpleNamespace(join_port=port))
    token_file = tmp_path / "agent-token"
    token_file.write_bytes(LOADED_TOKEN + b"\n")
    threading.Thread(target=join.serve_forever, args=(rack, token_file), daemon=True).start()
    for _ in range(100):
        try:
            connect_from(INSIDE, port).close()
            break
        except OSError:
            time.sleep(0.05)
    settled = time.monotonic() + 6      # threads are counted per process: start from none
    while handler_threads() and time.monotonic() < settled:
        time.sleep(0.05)
    return port


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((JUMPHOST, port))
    return sock


def fetch_from(source: str, port: int, timeout: float = 2) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(JUMPHOST, port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request("GET", join.PATH)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def read_all(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def service_log(capfd, until: str, seconds: float = 5) -> str:
    seen = ""
    deadline = time.monotonic() + seconds
    while until not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen += capfd.readouterr().err
    return seen


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("Thread-") and "process_request" in t.name)


def test_a_thousand_idle_outsiders_do_not_keep_a_pi_waiting(loaded, capfd):
    outsiders = []
    try:
        for i in range(1000):
            outsiders.append(connect_from(f"127.78.{i // 200}.{i % 200 + 1}", loaded))
        start = time.monotonic()
        status, body = fetch_from(INSIDE, loaded)
        took = time.monotonic() - start
        assert (status, body) == (200, LOADED_TOKEN + b"\n")
        assert took < 2, f"the Pi waited {took:.2f} s"
        # Each outsider had its 403 at once, before it sent anything, and was
        # closed: none holds a thread or a descriptor of the service.
        for sock in outsiders[::50]:
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.0 403 Forbidden\r\n"), answer
            assert answer.endswith(b"is not in the rack's subnet 127.77.0.0/24\n")
        settled = time.monotonic() + 1      # the Pi's own handler may still be finishing
        while handler_threads() and time.monotonic() < settled:
            time.sleep(0.05)
        assert handler_threads() == 0
    finally:
        for sock in outsiders:
            sock.close()
    # A flood is not a flood of journal lines.
    assert service_log(capfd, "refused", 1).count("refused") <= 2


def test_idle_connections_inside_are_bounded_and_cut(loaded, capfd):
    """More idle connections than the service has threads for: the extra
    ones are answered 503 at once; the rest are cut after CONNECTION_SECONDS."""
    idle = [connect_from(f"127.77.0.{100 + i}", loaded) for i in range(join.MAX_CONNECTIONS + 8)]
    try:
        time.sleep(0.5)
        assert handler_threads() == join.MAX_CONNECTIONS       # no more threads than that
        # Daemon threads: a connection never keeps the service from stopping.
        assert all(t.daemon for t in threading.enumerate() if "process_request" in t.name)
        busy = [read_all(sock, 1) for sock in idle[join.MAX_CONNECTIONS:]]
        assert all(answer.startswith(b"HTTP/1.0 503 Service Unavailable") for answer in busy), busy
        # The README's number: at most 32 at once.
        assert all(answer.endswith(b"\r\n\r\nbusy: 32 connections at once; try again\n") for answer in busy), busy
        start = time.monotonic()
        cut = [read_all(sock, join.CONNECTION_SECONDS + 2) for sock in idle[:join.MAX_CONNECTIONS]]
        assert time.monotonic() - start < join.CONNECTION_SECONDS + 1.5
        assert cut == [b""] * join.MAX_CONNECTIONS      # closed without an answer
        assert fetch_from(INSIDE, loaded) == (200, LOADED_TOKEN + b"\n")
    finally:
        for sock in idle:
            sock.close()
    assert "Request timed out" in service_log(capfd, "Request timed out")


def test_slow_loris_inside_the_subnet_is_cut_by_the_timeout(loaded, capfd):
    sock = connect_from(INSIDE, loaded)
    try:
        start = time.monotonic()
        sock.sendall(b"GET /v1/agent-token HTTP/1.0\r\nX-Slow: ")
        closed_after = None
        while time.monotonic() - start < join.CONNECTION_SECONDS + 3:
            try:
                sock.sendall(b"a")            # a byte now and then: never idle for long
            except OSError:
                closed_after = time.monotonic() - start
                break
            sock.settimeout(0.7)
            try:
                if sock.recv(4096) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
        assert closed_after is not None, "the slow client was never cut"
        assert join.CONNECTION_SECONDS - 0.5 < closed_after < join.CONNECTION_SECONDS + 1.5
    finally:
        sock.close()
    assert "Request timed out" in service_log(capfd, "Request timed out")


def test_control_characters_in_requests_are_escaped_in_the_log(loaded, capfd):
    for line in (b"GET /v1/\x1b[31mred\x07 HTTP/1.0", b"GET /a\rforged\x1b]0;title\x07 HTTP/1.0",
                 b"GET /\x00\x85\xff HTTP/1.0"):
        sock = connect_from(INSIDE, loaded)
        sock.sendall(line + b"\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.0 4")
        sock.close()
    log = service_log(capfd, "x00")
    assert "\\x1b[31mred\\x07" in log and "\\rforged" in log and "\\x00\\x85" in log
    assert all(c.isprintable() for c in log.replace("\n", "")), repr(log)


def test_a_client_that_hangs_up_leaves_one_line_and_no_traceback(loaded, capfd):
    sock = connect_from(INSIDE, loaded)
    sock.sendall(b"GET /v1/agent-token HTTP/1.0\r\n")
    time.sleep(0.2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # reset, not a close
    sock.close()
    log = service_log(capfd, "connection ended")
    assert f"{INSIDE} connection ended: ConnectionResetError" in log
    assert "Traceback" not in log
    assert fetch_from(INSIDE, loaded) == (200, LOADED_TOKEN + b"\n")


# --- pinned derivation, retry rhythm, and what a Pi's errors say -------------------

def test_the_agent_token_is_as_it_always_was():
    """Pinned: a jumphost upgraded to an agent that derived it otherwise would
    hand its Pis a token its running k3s does not know until it restarts."""
    assert join.agent_token(RACK_TOKEN, "loop") == (
        b"rackboot-agent-58e6184b5e06e3b2631df8d05bd0c2492426b4b0d721b66f073bbfaf2f7a7d39")


@pytest.mark.parametrize("step, waits", [(4, [5, 5]), (5, [5])])      # the deadline itself is the end
def test_fetch_retries_every_five_seconds_and_says_what_it_last_got(monkeypatch, step, waits):
    """The jumphost answers 503 until its token step has run: the Pi waits
    RETRY_SECONDS between tries and, at its deadline, names the last answer."""
    rack = profile("127.0.0.0/8", 8677)
    body = b"the jumphost has no agent token yet (its token step has not run)\n"

    def unavailable(url, timeout):
        raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, io.BytesIO(body))
    monkeypatch.setattr(join.urllib.request, "urlopen", unavailable)
    clock = iter(range(0, 10_000, step))          # each try takes step seconds
    monkeypatch.setattr(join, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    slept = []
    with pytest.raises(RackbootError) as failed:
        join.fetch(rack, timeout=10, sleep=slept.append)
    assert slept == waits
    assert str(failed.value) == ("no agent token from the jumphost at http://127.0.0.1:8677/v1/agent-token "
                                 "within 10 s; last: HTTP 503 (the jumphost has no agent token yet (its token "
                                 "step has not run))")
    assert failed.value.hint == ("is the jumphost up, with its token step done? On it: python3 -m firstboot "
                                 "status; systemctl status rackboot-join")


def answering(monkeypatch, answer):
    """urlopen answering every request with answer(url): bytes, or raising it;
    returns the (url, timeout) of each request."""
    class Answer:
        def __init__(self, body):
            self.body = body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body
    opened = []
    monkeypatch.setattr(join.urllib.request, "urlopen",
                        lambda url, timeout: opened.append((url, timeout)) or Answer(answer(url)))
    return opened


def test_an_empty_answer_is_waited_past(monkeypatch):
    answers = [b"\n", b"agent-token\n"]
    opened = answering(monkeypatch, lambda url: answers.pop(0))
    waits = []
    assert join.fetch(profile("127.0.0.0/8", 8677), timeout=60, sleep=waits.append) == b"agent-token"
    assert waits == [5]
    assert opened == [("http://127.0.0.1:8677/v1/agent-token", 10)] * 2


def test_a_refused_pi_is_told_its_address_and_the_racks_subnet(service):
    rack, token_file = service("10.77.0.0/24")
    with pytest.raises(RackbootError) as caught:
        join.fetch(rack, timeout=5)
    assert str(caught.value) == (f"the jumphost's join service (http://127.0.0.1:{rack.netboot.join_port}"
                                 "/v1/agent-token) refused this Pi: 127.0.0.1 is not in the rack's subnet "
                                 "10.77.0.0/24")
    assert caught.value.hint == "the Pi's address must be in the rack's subnet 10.77.0.0/24"


def defaults_under(environment: dict, module: str, constant: str, function: str) -> list[str]:
    """module.constant and function's timeout default, as a fresh agent
    process with environment (and none of the variables it names) sees them."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("RACKBOOT_")} | environment
    code = (f"from firstboot import {module} as m; import inspect; "
            f"print(m.{constant}, inspect.signature(m.{function}).parameters['timeout'].default)")
    shown = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                           capture_output=True, text=True, check=True)
    return shown.stdout.split()


@pytest.mark.parametrize("environment, seconds", [({}, "1800.0"), ({"RACKBOOT_JOIN_TIMEOUT": "7.5"}, "7.5")])
def test_how_long_a_pi_waits_for_its_jumphost_is_set_by_the_environment(environment, seconds):
    assert defaults_under(environment, "join", "FETCH_TIMEOUT", "fetch") == [seconds, seconds]


def test_a_jumphost_that_only_answers_empty_is_named_so(monkeypatch):
    answering(monkeypatch, lambda url: b"")
    with pytest.raises(RackbootError) as failed:
        join.fetch(profile("127.0.0.0/8", 8677), timeout=0, sleep=lambda s: None)
    assert str(failed.value).endswith("within 0 s; last: an empty answer")


def test_answers_that_are_not_utf8_are_shown_not_fatal(monkeypatch):
    def refuse(code):
        def answer(url):
            raise urllib.error.HTTPError(url, code, "", {}, io.BytesIO(b"caf\xe9 \xff"))
        return answer
    answering(monkeypatch, refuse(503))
    with pytest.raises(RackbootError) as failed:
        join.fetch(profile("127.0.0.0/8", 8677), timeout=0, sleep=lambda s: None)
    assert str(failed.value).endswith("last: HTTP 503 (caf\ufffd \ufffd)")
    answering(monkeypatch, refuse(403))
    with pytest.raises(RackbootError) as failed:
        join.fetch(profile("127.0.0.0/8", 8677), timeout=0, sleep=lambda s: None)
    assert str(failed.value).endswith("refused this Pi: caf\ufffd \ufffd")


def test_no_jumphost_listening_is_named_by_the_systems_reason():
    rack = profile("127.0.0.0/8", free_port())      # nothing listens there
    with pytest.raises(RackbootError) as failed:
        join.fetch(rack, timeout=0, sleep=lambda s: None)
    assert str(failed.value).endswith("within 0 s; last: [Errno 111] Connection refused")


def raw_get(rack, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", rack.netboot.join_port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        return read_all(sock)


def test_answers_are_plain_text_never_cached_and_logged_without_the_token(service, capfd):
    rack, token_file = service("127.0.0.0/8")
    head, _, body = raw_get(rack, join.PATH).partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.0 503 Service Unavailable"
    assert body == b"the jumphost has no agent token yet (its token step has not run)\n"
    token_file.write_bytes(b"agent-token-value\n")
    head, _, body = raw_get(rack, join.PATH).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.0 200 OK" and body == b"agent-token-value\n"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"Server"].startswith(b"rackboot-join ")
    assert (headers[b"Content-Type"], headers[b"Content-Length"], headers[b"Cache-Control"]) == \
        (b"text/plain", b"18", b"no-store")
    head, _, body = raw_get(rack, "/v1/other").partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.0 404 Not Found" and body == b"not found\n"
    log = service_log(capfd, "/v1/other")
    assert '127.0.0.1 "GET /v1/agent-token HTTP/1.0" 200 -' in log.splitlines()     # one whole line
    assert "agent-token-value" not in log


def test_a_request_read_at_its_deadline_is_cut(monkeypatch):
    """_DeadlineReader: no time left (to the instant) is no more reading."""
    left, right = socket.socketpair()
    try:
        monkeypatch.setattr(join, "time", types.SimpleNamespace(monotonic=lambda: 100.0))
        reader = join._DeadlineReader(left, 100.0)
        with pytest.raises(TimeoutError) as caught:
            reader.readinto(bytearray(10))
        assert str(caught.value) == "no whole request within 5 s"
    finally:
        left.close()
        right.close()


def test_refusals_are_logged_once_then_counted_every_ten_seconds(monkeypatch, capsys):
    """The refusal log of verify_request: the first refusal is a line; then
    one line per REFUSAL_LOG_SECONDS (10) at most, with the count so far."""
    now = [5.0]
    monkeypatch.setattr(join, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    handler = type("Handler", (join._Handler,), {"token_file": Path("/nonexistent")})
    server = join._Server(("127.0.0.1", 0), handler, ipaddress.IPv4Network("127.0.0.0/8"))
    try:
        def refuse(at: float) -> str:
            now[0] = at
            ours, theirs = socket.socketpair()
            with ours, theirs:
                assert server.verify_request(ours, ("10.9.8.7", 4242)) is False
                assert theirs.recv(4096).startswith(b"HTTP/1.0 403 Forbidden\r\n")
            return capsys.readouterr().err
        assert refuse(5.0) == "10.9.8.7 refused: not in the rack's subnet 127.0.0.0/8\n"
        assert refuse(9.0) == ""
        assert refuse(14.9) == ""
        assert refuse(15.0) == "10.9.8.7 refused: not in the rack's subnet 127.0.0.0/8 (4 refused in all)\n"
        assert refuse(16.0) == ""
    finally:
        server.server_close()
