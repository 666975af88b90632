"""How a Pi gets its k3s token: from its jumphost, not from the secret store.

A Pi boots a root that every Pi of every rack shares over NFS, so no secret
can live in it; and a Google key on every Pi would be a long-lived secret on
hundreds of machines. Instead:

  - the jumphost derives an *agent token* from the rack's token (an HMAC, so
    rotating the rack token rotates it) and gives it to its k3s server as
    agent-token-file: it joins agents, never servers;
  - the jumphost's join service (rackboot-join.service, `python -m firstboot
    join-server`) hands it out on the rack network, to addresses in the
    rack's subnet only: GET http://JUMPHOST:JOIN_PORT/v1/agent-token;
  - a Pi's token step fetches it from there into /etc/rancher/k3s/token,
    waiting for the jumphost for as long as it takes to come up.

The threat model (what the rack network can do with it) is in the README,
"How the Pis get the token".
"""

import hashlib
import hmac
import http.server
import ipaddress
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from firstboot.errors import RackbootError

AGENT_TOKEN_FILE = Path("/etc/rancher/k3s/agent-token")
PATH = "/v1/agent-token"
FETCH_TIMEOUT = float(os.environ.get("RACKBOOT_JOIN_TIMEOUT", "1800"))   # a jumphost may take a while
RETRY_SECONDS = 5


def agent_token(rack_token: bytes) -> bytes:
    return b"rackboot-agent-" + hmac.new(rack_token, b"rackboot k3s agent token", hashlib.sha256).hexdigest().encode()


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


class _Handler(http.server.BaseHTTPRequestHandler):
    subnet: ipaddress.IPv4Network
    token_file: Path
    server_version = "rackboot-join"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        client = ipaddress.ip_address(self.client_address[0])
        if self.path != PATH:
            self._send(404, b"not found\n")
        elif client not in self.subnet:
            self._send(403, f"{client} is not in the rack's subnet {self.subnet}\n".encode())
        else:
            try:
                value = self.token_file.read_bytes().strip()
            except FileNotFoundError:
                value = b""
            if value:
                self._send(200, value + b"\n")
            else:
                self._send(503, b"the jumphost has no agent token yet (its token step has not run)\n")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        # Address, request line and status: never the body (the token).
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


class _Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        # Bind to the rack address even before the network has put it on the
        # interface (as dnsmasq's bind-dynamic does): no start-up race.
        self.socket.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()


def serve_forever(profile, token_file: Path = AGENT_TOKEN_FILE) -> None:
    handler = type("Handler", (_Handler,), {"subnet": profile.network.subnet, "token_file": token_file})
    server = _Server((str(profile.jumphost.address), profile.netboot.join_port), handler)
    try:
        from systemd import daemon
        daemon.notify("READY=1")
    except ImportError:
        pass
    sys.stderr.write(f"rackboot join service for rack {profile.rack} on {url(profile)}\n")
    server.serve_forever()
