"""A DHCP client that asks the way a Raspberry Pi 4 bootloader asks for a
network boot: a DHCPDISCOVER with the PXE options (vendor class
PXEClient:Arch:00000:UNDI:002001, client architecture 0, UNDI 2.1, a client
UUID; RFC 2131/2132, 4578) from its MAC, broadcast. Used by the netboot test
against the jumphost's real dnsmasq; run as a program on the Pi's side of a
link it prints the first answer as one JSON line:

    python -m tests.lib.dhcp_client IFACE MAC [--timeout S]

The bootloader boots only from an offer whose vendor options (43) carry the
PXE menu entry "Raspberry Pi Boot" and whose vendor class (60) is PXEClient,
and asks TFTP of the server that made that offer (option 54).
"""

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
import time

MAGIC = b"\x63\x82\x53\x63"
VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"
MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 5: "ACK", 6: "NAK"}


def discover(mac: str, xid: int) -> bytes:
    chaddr = bytes.fromhex(mac.replace(":", ""))
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,   # broadcast flag
                         bytes(4), bytes(4), bytes(4), bytes(4), chaddr.ljust(16, b"\0"), b"", b"")
    options = [
        (53, bytes([1])),                               # DHCPDISCOVER
        (57, struct.pack("!H", 1260)),                  # maximum message size
        (93, struct.pack("!H", 0)),                     # client architecture: x86 BIOS, as the Pi says
        (94, bytes([1, 2, 1])),                         # UNDI 2.1
        (97, b"\0" + bytes(range(16))),                 # client machine UUID
        (60, VENDOR_CLASS),
        (55, bytes([1, 3, 43, 54, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135])),
    ]
    body = b"".join(bytes([code, len(value)]) + value for code, value in options) + b"\xff"
    return header + MAGIC + body


def parse_options(data: bytes) -> dict[int, bytes]:
    options, i = {}, 0
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = data[i + 1]
        options[code] = options.get(code, b"") + data[i + 2:i + 2 + length]
        i += 2 + length
    return options


def pxe_menu(vendor_options: bytes) -> list[str]:
    """The boot menu entries (PXE sub-option 9: type, length, description)."""
    menu = parse_options(vendor_options).get(9, b"")
    entries, i = [], 0
    while i + 3 <= len(menu):
        length = menu[i + 2]
        entries.append(menu[i + 3:i + 3 + length].decode(errors="replace"))
        i += 3 + length
    return entries


def parse_reply(packet: bytes) -> dict:
    op, _, _, _, xid = struct.unpack("!BBBBI", packet[:8])
    yiaddr, siaddr = packet[16:20], packet[20:24]
    chaddr = packet[28:34]
    if packet[236:240] != MAGIC:
        raise ValueError("not a DHCP packet")
    options = parse_options(packet[240:])
    return {
        "op": op, "xid": xid, "chaddr": ":".join(f"{b:02x}" for b in chaddr),
        "type": MESSAGE_TYPES.get(options.get(53, b"\0")[0], "?"),
        "yiaddr": str(ipaddress.IPv4Address(yiaddr)), "siaddr": str(ipaddress.IPv4Address(siaddr)),
        "server_id": str(ipaddress.IPv4Address(options[54])) if 54 in options else None,
        "vendor_class": options.get(60, b"").decode(errors="replace"),
        "pxe_menu": pxe_menu(options.get(43, b"")),
        "tftp_server": options.get(66, b"").decode(errors="replace") or None,
        "router": str(ipaddress.IPv4Address(options[3][:4])) if 3 in options else None,
    }


def ask(interface: str, mac: str, timeout: float) -> dict:
    xid = int.from_bytes(os.urandom(4), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", 68))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(discover(mac, xid), ("255.255.255.255", 67))
            sock.settimeout(1.0)
            try:
                while True:
                    packet, _ = sock.recvfrom(4096)
                    if len(packet) >= 240 and packet[0] == 2 and struct.unpack("!I", packet[4:8])[0] == xid:
                        return parse_reply(packet)
            except socket.timeout:
                continue          # the bootloader repeats its DISCOVER too
    raise TimeoutError(f"no DHCP answer on {interface} within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("interface")
    parser.add_argument("mac")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    try:
        print(json.dumps(ask(args.interface, args.mac, args.timeout)))
    except TimeoutError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
