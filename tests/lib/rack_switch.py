"""The virtual rack's Ethernet switch: a learning switch between QEMU
`-netdev socket,udp=...` cables on the host's loopback.

Each machine's NIC sends its frames as UDP datagrams from its own port to
the switch's; the switch learns which port each source MAC is behind, sends
a frame to that port only when it knows its destination, and floods
broadcasts, multicasts and unknown destinations to every other port, as a
rack's switch does. (QEMU's own hub floods everything, which breaks its user
network: see tests/lib/virtual_rack.py.)
"""

import socket
import threading

from tests.lib.virtual_rack import SwitchPort


class RackSwitch:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[1]
        self.ports: set[int] = set()
        self.table: dict[bytes, int] = {}
        self.frames = 0
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self._thread.start()

    def plug(self) -> SwitchPort:
        """A new cable: a free local port for a machine to send from."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.ports.add(port)
        return SwitchPort(switch=self.address, port=port)

    def _forward(self) -> None:
        while True:
            try:
                frame, (_, source) = self.sock.recvfrom(65536)
            except OSError:
                return
            if source not in self.ports or len(frame) < 14:
                continue
            self.frames += 1
            destination, sender = frame[0:6], frame[6:12]
            if not sender[0] & 1:
                self.table[sender] = source
            known = self.table.get(destination) if not destination[0] & 1 else None
            for port in ([known] if known is not None else self.ports - {source}):
                try:
                    self.sock.sendto(frame, ("127.0.0.1", port))
                except OSError:
                    pass        # a machine that is off: its cable is unplugged

    def close(self) -> None:
        self.sock.close()
