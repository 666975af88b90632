"""The pretend rack's network: a Linux bridge on the test host joining the
rack's pretend machines (tests/lib/machine.py), each in a network namespace
of its own behind a veth pair, as a rack switch joins real machines.

The bridge holds the rack router's address, and each machine has a default
route through it: k3s picks its node IP from the interface of the default
route, and a kubelet refuses a loopback node IP. The test host is the router:
the test reaches a machine's k3s API and TFTP at the machine's address, and a
machine reaches a double on the test host at the router's address (expose()
relays a port there, as QEMU's user network does for the VM tier).

Each rack claims a /16 of POOL of its own by creating its bridge, named after
the /16 (creating a link is atomic: two test runs in one network namespace
never take the same one), so racks that exist at once never share addresses
and the host routes each rack's subnet to its own bridge. Rack profiles are
moved into that /16 (translate()): a machine at offset N of the profile's
subnet is at offset N of the claimed one.
"""

import ipaddress
import itertools
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

# 10.100.0.0/16 .. 10.199.0.0/16: apart from k3s's default cluster and
# service networks (10.42.0.0/16, 10.43.0.0/16) and from any route the test host has.
POOL = [ipaddress.IPv4Network(f"10.{octet}.0.0/16") for octet in range(100, 200)]
BRIDGE_PREFIX = "rbt"
# Each live bridge has a file here too (bridge-NAME, JSON: the test process's
# pid and the network namespace it is in), for reap.
REGISTRY = Path("/run/rackboot-test-machines")
INTERFACE = "eth0"       # the machine's end of its veth: the image boots with net.ifnames=0
# The veths' host ends, numbered for the whole test run: a namespace's
# devices go only some time after its last process, by then a later rack may
# have this one's bridge name.
_cables = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check)


def _routed() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_ip("-4", "-j", "route", "show", "table", "all").stdout or "[]")
    return [ipaddress.IPv4Network(r["dst"], strict=False) for r in routes if r.get("dst") not in (None, "default")]


class RackNetwork:
    def __init__(self, prefixlen: int = 24, router_offset: int = 1):
        """Claim a /16 of POOL; the rack's subnet is its first network of
        prefixlen (at least 16), the router at router_offset in it."""
        routed = _routed()
        for block in POOL:
            if any(block.overlaps(net) for net in routed):
                continue
            name = f"{BRIDGE_PREFIX}{block.network_address.packed[1]}"
            if _ip("link", "add", name, "type", "bridge", check=False).returncode == 0:
                break
        else:
            raise RuntimeError(f"no free /16 left in {POOL[0]}..{POOL[-1]} for a pretend rack's bridge")
        self.bridge = name
        self.subnet = next(block.subnets(new_prefix=max(prefixlen, 16)))
        self.router = self.subnet.network_address + router_offset
        _ip("addr", "add", f"{self.router}/{self.subnet.prefixlen}", "dev", name)
        _ip("link", "set", name, "up")
        self._relays: dict[str, Relay] = {}
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._entry = REGISTRY / f"bridge-{name}-{os.getpid()}"
        self._entry.write_text(json.dumps({"owner": os.getpid(), "net": net_namespace(), "bridge": name}))

    def translate(self, address, old_subnet) -> ipaddress.IPv4Address:
        """The address at the same offset in this rack's subnet."""
        offset = int(ipaddress.IPv4Address(address)) - int(ipaddress.IPv4Network(old_subnet).network_address)
        if not 0 < offset < self.subnet.num_addresses - 1:
            raise ValueError(f"{address} does not fit {self.subnet} at its offset in {old_subnet}")
        return self.subnet.network_address + offset

    def attach(self, holder_pid: int, address) -> str:
        """Cable the network namespace of holder_pid to the bridge: its
        INTERFACE with the address, and a default route through the router.
        Returns the cable's host end, for detach."""
        host_end = f"{self.bridge}-{next(_cables)}"
        _ip("link", "add", host_end, "type", "veth", "peer", "name", INTERFACE, "netns", str(holder_pid))
        _ip("link", "set", host_end, "master", self.bridge, "up")
        inside = ["nsenter", "-t", str(holder_pid), "-n", "--", "ip"]
        for args in (["link", "set", "lo", "up"],
                     ["addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", INTERFACE],
                     ["link", "set", INTERFACE, "up"],
                     ["route", "add", "default", "via", str(self.router)]):
            subprocess.run([*inside, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True)
        return host_end

    @staticmethod
    def detach(host_end: str) -> None:
        _ip("link", "del", host_end, check=False)    # both ends: a veth pair goes as one

    def expose(self, host_port: str) -> str:
        """'127.0.0.1:PORT' of a double on the test host -> 'ROUTER:PORT', where the machines reach it."""
        host, port = host_port.rsplit(":", 1)
        if host_port not in self._relays:
            self._relays[host_port] = Relay((str(self.router), int(port)), (host, int(port)))
        return f"{self.router}:{port}"

    def destroy(self) -> None:
        for relay in self._relays.values():
            relay.close()
        _ip("link", "del", self.bridge, check=False)   # the veths go with their machines' namespaces
        self._entry.unlink(missing_ok=True)


def reap(alive) -> list[str]:
    """Delete the bridges that test runs no longer alive(pid) made in this
    network namespace (another namespace's bridges are out of reach, and
    cannot take this one's subnets)."""
    reaped = []
    for entry in REGISTRY.glob("bridge-*") if REGISTRY.is_dir() else []:
        try:
            record = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if record["net"] == net_namespace() and not alive(int(record["owner"])):
            links = json.loads(_ip("-j", "link", "show").stdout or "[]")
            for link in links:     # cables whose machine's namespace outlived the run
                if link["ifname"].startswith(record["bridge"] + "-"):
                    _ip("link", "del", link["ifname"], check=False)
            _ip("link", "del", record["bridge"], check=False)
            entry.unlink(missing_ok=True)
            reaped.append(record["bridge"])
    return reaped


def net_namespace() -> str:
    return os.readlink("/proc/self/ns/net")


class Relay:
    """TCP from listen to target, both ways, for as long as the rack lives
    (gRPC keeps its HTTP/2 connection open)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server(listen)
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        # shutdown, not only close: a close leaves the port listening while
        # the accepting thread is blocked in accept(), shutdown wakes it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
