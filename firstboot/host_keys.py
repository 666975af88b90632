"""A Pi's ssh host key: the same at every boot, held by no file of the shared root.

Every Pi of every rack boots one read-only root that anything on the rack
network can read over NFS, so no Pi's private key can be in it; and a
netbooted Pi keeps nothing of its own between boots (its /etc is a tmpfs).
So its jumphost gives it its key, as it gives it the agent token:

  - the jumphost's token step derives a *host-key secret* from the rack's
    token and the rack's name (install_secret), into a root-only file;
  - the join service derives each Pi's Ed25519 key from that secret and the
    Pi's node name, and hands it out at GET /v1/ssh-host-key/NODE (answer):
    to addresses in the rack's subnet only, to a Pi of the profile only, and,
    when the profile gives the Pi an address, to that address only;
  - the Pi fetches it before sshd starts (firstboot/pi_access.py).

Derived, not stored: a replacement jumphost (which reads the same rack token)
hands out the same keys, and nothing needs backing up. Rotating the rack
token changes every Pi's host key once. The join service holds the derived
secret, not the rack token; racks that share a stored token do not share
keys (the rack's name is in the derivation). What someone on the rack
network can do with it is in the README, "The Pis' ssh host keys".
"""

import hashlib
import hmac
import ipaddress
from pathlib import Path

from firstboot import system
from firstboot.errors import RackbootError

PATH = "/v1/ssh-host-key/"          # + the Pi's node name
SECRET_MESSAGE = b"rackboot ssh host keys v1\0"   # domain separation from every other HMAC of the rack token
KEY_MESSAGE = b"rackboot ssh host key v1\0"
MAX_KEY_BYTES = 4096                # an OpenSSH Ed25519 private key is about 400


def secret(rack_token: bytes, rack: str) -> bytes:
    """The rack's host-key secret (32 bytes): keyed by the rack token, bound to the rack."""
    return hmac.new(rack_token, SECRET_MESSAGE + rack.encode() + b"\0", hashlib.sha256).digest()


def install_secret(token_file: Path, rack: str, secret_file: Path) -> bool:
    """secret_file (root-only): the host-key secret of the rack whose token
    is in token_file (the token step has just written it). True if it changed."""
    try:
        rack_token = token_file.read_bytes().strip()
    except FileNotFoundError:
        raise RackbootError(f"{token_file}: no rack token to derive the Pis' ssh host keys from") from None
    if not rack_token:
        raise RackbootError(f"{token_file}: empty; no rack token to derive the Pis' ssh host keys from")
    return system.place(secret(rack_token, rack).hex().encode() + b"\n", secret_file, 0o600)


def private_key(rack_secret: bytes, node: str):
    """node's Ed25519 key (cryptography's), its seed an HMAC of the node's name."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    seed = hmac.new(rack_secret, KEY_MESSAGE + node.encode() + b"\0", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def openssh_private(key) -> bytes:
    """key as sshd reads a host key file (the OpenSSH format, unencrypted)."""
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def openssh_public(key, comment: str) -> bytes:
    """key's public half as a .pub line: 'ssh-ed25519 BASE64 comment'."""
    from cryptography.hazmat.primitives import serialization
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + b" " + comment.encode() + b"\n"


def load_private(data: bytes):
    """The Ed25519 key in data (OpenSSH format); ValueError if it is none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if len(data) > MAX_KEY_BYTES:
        raise ValueError(f"larger than {MAX_KEY_BYTES} bytes")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"not an unencrypted OpenSSH private key ({type(err).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"a {type(key).__name__}, not an Ed25519 key")
    return key


def _read_secret(secret_file: Path) -> bytes | None:
    try:
        return bytes.fromhex(secret_file.read_text().strip()) or None
    except (FileNotFoundError, ValueError):
        return None


def answer(profile, secret_file: Path, client: str, node: str) -> tuple[int, bytes]:
    """The join service's answer (status, body) to client asking for node's
    key. The client is in the rack's subnet (join.py checked that before
    reading the request). The body is the key only with 200."""
    pi = next((pi for pi in profile.pis if pi.name == node), None)
    if pi is None:
        return 404, f"no Pi of rack {profile.rack} has that name\n".encode()
    if pi.address and ipaddress.ip_address(client) != pi.address:
        return 403, (f"{node}'s host key goes to its address in the profile ({pi.address}) only, "
                     f"not to {client}\n").encode()
    rack_secret = _read_secret(secret_file)
    if rack_secret is None:
        return 503, b"the jumphost has no ssh host-key secret yet (its token step has not run)\n"
    return 200, openssh_private(private_key(rack_secret, node))
