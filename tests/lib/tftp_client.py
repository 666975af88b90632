"""A TFTP client that asks the way a Raspberry Pi 4 bootloader asks: RRQ in
octet mode with the tsize and blksize options (RFC 1350, 2347-2349), and a
read-through of every block. Used by the conformance test against the
jumphost's real dnsmasq; run as a program it fetches the files named on its
command line and prints one JSON line per answer:

    python -m tests.lib.tftp_client SERVER FILE... --out DIR
"""

import argparse
import json
import socket
import struct
import sys
from pathlib import Path

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
BLKSIZE = 1468    # what the Pi bootloader asks for: an Ethernet frame's worth


def fetch(server: str, name: str, timeout: float = 5.0) -> dict:
    """Return {"name", "ok", "data"|"error_code"/"error", "tsize"}."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        request = struct.pack("!H", RRQ) + b"\0".join(
            [name.encode(), b"octet", b"tsize", b"0", b"blksize", str(BLKSIZE).encode()]) + b"\0"
        sock.sendto(request, (server, 69))
        data, expected, blksize, tsize = bytearray(), 1, 512, None
        while True:
            packet, peer = sock.recvfrom(65536)
            opcode = struct.unpack("!H", packet[:2])[0]
            if opcode == ERROR:
                code = struct.unpack("!H", packet[2:4])[0]
                return {"name": name, "ok": False, "error_code": code,
                        "error": packet[4:].rstrip(b"\0").decode(errors="replace")}
            if opcode == OACK:
                fields = packet[2:].rstrip(b"\0").split(b"\0")
                options = {k.decode().lower(): v.decode() for k, v in zip(fields[::2], fields[1::2])}
                blksize = int(options.get("blksize", 512))
                tsize = int(options["tsize"]) if "tsize" in options else None
                sock.sendto(struct.pack("!HH", ACK, 0), peer)
                continue
            if opcode != DATA:
                return {"name": name, "ok": False, "error_code": -1, "error": f"unexpected opcode {opcode}"}
            block = struct.unpack("!H", packet[2:4])[0]
            if block == expected:
                data += packet[4:]
                expected = (expected + 1) & 0xFFFF
            sock.sendto(struct.pack("!HH", ACK, block), peer)
            if block == (expected - 1) & 0xFFFF and len(packet) - 4 < blksize:
                return {"name": name, "ok": True, "data": bytes(data), "tsize": tsize, "blksize": blksize}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="where fetched files are written")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(args.files):
        answer = fetch(args.server, name)
        if answer["ok"]:
            target = args.out / f"{index:02d}"
            target.write_bytes(answer.pop("data"))
            answer["saved"] = str(target)
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
