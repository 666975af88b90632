"""How a Pi gets its k3s token: from its jumphost, not from the secret store.

A Pi boots a root that every Pi of every rack shares over NFS, so no secret
can live in it; and a Google key on every Pi would be a long-lived secret on
hundreds of machines. Instead:

  - the jumphost derives an *agent token* from the rack's token and the
    rack's name (an HMAC, so rotating the rack token rotates it, and racks
    that share a stored token do not share agent tokens) and gives it to its
    k3s server as agent-token-file: it joins agents, never servers;
  - the jumphost's join service (rackboot-join.service, `python -m firstboot
    join-server`) hands it out on the rack network, to addresses in the
    rack's subnet only: GET http://JUMPHOST:JOIN_PORT/v1/agent-token;
  - a Pi's token step fetches it from there into its token file,
    waiting for the jumphost for as long as it takes to come up.

It hands each Pi its ssh host key too (GET /v1/ssh-host-key/NODE, derived
from the rack's token: firstboot/host_keys.py), the rack's bundle in use
(GET /v1/bundle, a tar: firstboot/pi_bundle.py), so that a Pi added by a
push finds itself in it, and the k3s its server runs (GET /v1/k3s...:
firstboot/k3s_follow.py), so that the Pis follow an upgrade. The service reads the bundle when it starts; the
agent's serve step restarts it when the bundle in use changes.

The service faces everything on the rack network, so an address outside the
subnet is answered 403 and closed before anything is read, in the accepting
thread; a connection has CONNECTION_SECONDS for its whole request (slow
clients are cut); at most MAX_CONNECTIONS are served at once (more get 503);
log lines carry no control characters from requests, and a client that hangs
up costs one line, not a traceback.

The threat model (what the rack network can do with it) is in the README,
"How the Pis get the token".
"""

import hashlib
import hmac
import http.server
import io
import ipaddress
import os
import shutil
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from firstboot import host_keys, k3s_follow
from firstboot.errors import RackbootError
from firstboot.layout import MACHINE, Layout

PATH = "/v1/agent-token"
BUNDLE_PATH = "/v1/bundle"
FETCH_TIMEOUT = float(os.environ.get("RACKBOOT_JOIN_TIMEOUT", "1800"))   # a jumphost may take a while
RETRY_SECONDS = 5


def agent_token(rack_token: bytes, rack: str) -> bytes:
    """The agent token of one rack. The design gives every rack the same
    stored token (hot-swappable jumphosts), so the rack's name is part of
    the message: one rack's agent token joins no other rack. The message is
    domain-separated (its own prefix, NUL-terminated fields) from every other
    HMAC keyed by the rack token (firstboot/k3s.py's node password)."""
    message = b"rackboot k3s agent token v2\0" + rack.encode() + b"\0"
    return b"rackboot-agent-" + hmac.new(rack_token, message, hashlib.sha256).hexdigest().encode()


def url(profile) -> str:
    return f"http://{profile.jumphost.address}:{profile.netboot.join_port}{PATH}"


def fetch(profile, timeout: float = FETCH_TIMEOUT, sleep=time.sleep) -> bytes:
    """The agent token from the rack's jumphost, retrying until timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url(profile), timeout=10) as answer:
                value = answer.read().strip()
            if value:
                return value
            last = "an empty answer"
        except urllib.error.HTTPError as err:
            if err.code == 403:
                raise RackbootError(f"the jumphost's join service ({url(profile)}) refused this Pi: "
                                    f"{err.read().decode(errors='replace').strip()}",
                                    hint=f"the Pi's address must be in the rack's subnet {profile.network.subnet}") from None
            last = f"HTTP {err.code} ({err.read().decode(errors='replace').strip()})"
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
        if time.monotonic() >= deadline:
            raise RackbootError(f"no agent token from the jumphost at {url(profile)} within {timeout:.0f} s; "
                                f"last: {last}",
                                hint="is the jumphost up, with its token step done? On it: "
                                     "python3 -m firstboot status; systemctl status rackboot-join")
        sleep(RETRY_SECONDS)


# The service answers the rack network, where anything can connect, so it
# must hold up to more connections than it has Pis, idle or slow ones, and
# bytes no Pi would send:
CONNECTION_SECONDS = 5.0     # one connection, from accept to the last byte of the answer
MAX_CONNECTIONS = 32         # handler threads at once (rackboot-join.service's LimitNOFILE/TasksMax fit it)
LISTEN_BACKLOG = 128
REFUSAL_LOG_SECONDS = 10.0   # refused connections are logged once, then counted per period


def printable(text: str) -> str:
    """text for a log line, its control (and other unprintable) characters
    escaped as Python does (\\x1b), so a request cannot forge, hide or
    colour journal lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _answer_and_close(sock: socket.socket, status: int, reason: str, body: str) -> None:
    """A whole answer written without waiting: for connections refused before
    anything of their request is read. The kernel's socket buffer takes it."""
    data = (f"HTTP/1.0 {status} {reason}\r\nServer: rackboot-join\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body.encode())}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            f"{body}").encode()
    try:
        sock.setblocking(False)
        sock.send(data)
        # Whatever of the request is already here is dropped (not parsed), so
        # that closing does not reset the connection before the answer is read.
        for _ in range(16):
            if not sock.recv(4096):
                break
    except OSError:      # nothing more to read, or the client is gone: either way, done
        pass


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each allowed only what is left of the
    connection's time: a client that sends a byte now and then (a slow
    loris) is cut when its time is up, not at the first pause."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no whole request within {CONNECTION_SECONDS:.0f} s")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    token_file: Path
    profile: object
    host_key_secret: Path
    bundle_archive: bytes | None      # the rack's bundle in use, packed (None: the image's is unsealed)
    layout: Layout                    # the served k3s version and its files (firstboot/k3s_follow.py)
    server_version = "rackboot-join"
    timeout = CONNECTION_SECONDS     # writes too: a client that does not read its answer

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection,
                                                       time.monotonic() + self.server.connection_seconds))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        # The client's address was checked before anything was read (_Server.verify_request).
        if self.path.startswith(host_keys.PATH):
            self._send(*host_keys.answer(self.profile, self.host_key_secret, self.client_address[0],
                                         self.path[len(host_keys.PATH):]))
            return
        if self.path == BUNDLE_PATH and self.bundle_archive:
            self._send(200, self.bundle_archive, "application/x-tar")
            return
        if self.path == k3s_follow.PATH or self.path.startswith(k3s_follow.PATH + "/"):
            self._send(*k3s_follow.answer(self.layout, self.path))
            return
        if self.path != PATH:
            self._send(404, b"not found\n")
            return
        try:
            value = self.token_file.read_bytes().strip()
        except FileNotFoundError:
            value = b""
        if value:
            self._send(200, value + b"\n")
        else:
            self._send(503, b"the jumphost has no agent token yet (its token step has not run)\n")

    def _send(self, status: int, body: bytes | Path, content_type: str = "text/plain") -> None:
        """body: bytes, or a file streamed (each write bounded by the socket's timeout)."""
        with (body.open("rb") if isinstance(body, Path) else io.BytesIO(body)) as data:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(os.fstat(data.fileno()).st_size if isinstance(body, Path)
                                                   else len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            shutil.copyfileobj(data, self.wfile, 1 << 20)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        # Address, request line and status: never the body (the token).
        sys.stderr.write(f"{self.client_address[0]} {printable(format % args)}\n")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, handler, subnet: ipaddress.IPv4Network,
                 connection_seconds: float = CONNECTION_SECONDS, max_connections: int = MAX_CONNECTIONS):
        self.subnet = subnet
        self.connection_seconds = connection_seconds
        self.slots = threading.BoundedSemaphore(max_connections)
        self._refused, self._refusals_logged = 0, -REFUSAL_LOG_SECONDS
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # Bind to the rack address even before the network has put it on the
        # interface (as dnsmasq's bind-dynamic does): no start-up race.
        self.socket.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()

    def verify_request(self, request, client_address) -> bool:
        """Runs in the accepting thread, before anything is read: an address
        outside the rack's subnet gets its 403 at once, and no thread."""
        client = ipaddress.ip_address(client_address[0])
        if client in self.subnet:
            return True
        _answer_and_close(request, 403, "Forbidden", f"{client} is not in the rack's subnet {self.subnet}\n")
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged >= REFUSAL_LOG_SECONDS:   # a flood is not a flood of journal lines
            sys.stderr.write(f"{client} refused: not in the rack's subnet {self.subnet}"
                             + (f" ({self._refused} refused in all)" if self._refused > 1 else "") + "\n")
            self._refusals_logged = now
        return False

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            _answer_and_close(request, 503, "Service Unavailable",
                              f"busy: {MAX_CONNECTIONS} connections at once; try again\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        # One line, not a traceback: a client that hangs up is not news.
        error = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection ended: {type(error).__name__}"
                         + (f": {printable(str(error))}" if str(error) else "") + "\n")


def serve_forever(profile, token_file: Path, connection_seconds: float = CONNECTION_SECONDS,
                  host_key_secret: Path | None = None, bundle_archive: bytes | None = None,
                  layout: Layout = MACHINE) -> None:
    """Serve token_file (the jumphost's Layout.agent_token_file) to profile's
    rack, its Pis' host keys from host_key_secret (Layout.ssh_host_key_secret),
    bundle_archive (the rack's bundle in use, packed) and layout's served k3s."""
    handler = type("Handler", (_Handler,), {"token_file": token_file, "profile": profile,
                                            "host_key_secret": host_key_secret or MACHINE.ssh_host_key_secret,
                                            "bundle_archive": bundle_archive, "layout": layout})
    server = _Server((str(profile.jumphost.address), profile.netboot.join_port), handler,
                     profile.network.subnet, connection_seconds)
    try:
        from systemd import daemon
        daemon.notify("READY=1")
    except ImportError:
        pass
    sys.stderr.write(f"rackboot join service for rack {profile.rack} on {url(profile)}\n")
    server.serve_forever()
