"""Token: fetch the rack's shared k3s token and put it where k3s reads it.

The jumphost reads the rack's token from its secret reference; a Pi gets the
agent token from its jumphost (firstboot/join.py). Tokens go only into
root-only files written atomically: Layout.token_file, and on the
jumphost Layout.agent_token_file; k3s's config.yaml names them
(token-file, agent-token-file), so no value is in a config file, log,
journal field or status record. The step reports whether the files changed
(a rotated token), never a value or a hash of it.
"""

import re
from pathlib import Path

from firstboot import join, secrets, system
from firstboot.errors import RackbootError
from firstboot.layout import MACHINE
from firstboot.secretref import SecretRef

K3S_TOKEN_PREFIX = b"K10"
K3S_CA_HASH_LENGTH = 64                                                   # hex SHA-256
BOOTSTRAP_TOKEN = re.compile(rb"[a-z0-9]{6}\.[a-z0-9]{16}")                # kubeadm's ID.SECRET


def install_token(ref: SecretRef, rack: str, path: Path, access=None,
                  datastore: Path | None = None, agent_token_file: Path | None = None) -> dict:
    """path: the token file (Layout.token_file); the agent token goes beside
    it unless agent_token_file says where (Layout.agent_token_file).
    rack: the rack's name, bound into its agent token (join.agent_token).
    datastore: a k3s server's datastore directory. When it exists, k3s
    refuses to start with a token other than the one it was set up (or
    rotated, with `k3s token rotate`) to; any other changed token fails here
    and the old file stays."""
    value = (access or secrets.access)(ref).strip()
    if not value:
        raise RackbootError(f"{ref}: the secret is empty", hint="store the k3s token there")
    if b"\n" in value:
        raise RackbootError(f"{ref}: the secret has more than one line; a k3s token has one",
                            hint="store the token alone, or use {ref: ..., key: ...} for a Secret YAML")
    if value.startswith(b"K10") and b"::" in value:
        # A secure token pins one server's CA; every jumphost flashed from the
        # image makes its own, so the rack's shared token must not pin one.
        raise RackbootError(f"{ref}: the secret is a secure k3s token (K10<CA hash>::...), which pins "
                            "one server's CA; a replacement jumphost would have another",
                            hint="store the short form: the part after '::server:' of K10...::server:SECRET")
    password = k3s_token_password(value)
    if password is None:
        raise RackbootError(f"{ref}: the secret is not a k3s server token: k3s finds no password in it "
                            "(it takes PASSWORD, or K10<CA hash>::USER:PASSWORD)",
                            hint="store the rack's k3s token, the password alone")
    if _differs(path, value) and datastore is not None and datastore.exists() and path.exists() \
            and _server_token_secret(datastore) != password:
        raise RackbootError(
            f"{ref}: the k3s token changed, but this server's datastore ({datastore}) was made with "
            "the old one and k3s refuses to start with another",
            hint="rotate it in k3s first (on the jumphost: k3s token rotate --token OLD --new-token NEW), "
                 "or reflash the jumphost; see the README, 'Rotating the token'")
    changed = system.place(value + b"\n", path, 0o600)
    agent_file = agent_token_file or path.with_name(MACHINE.agent_token_file.name)
    changed |= system.place(join.agent_token(value, rack) + b"\n", agent_file, 0o600)
    return {"reference": str(ref), "file": str(path), "changed": changed}


def install_pi_token(profile, path: Path) -> dict:
    """A Pi's token: the agent token its jumphost's join service hands out,
    into path (Layout.token_file)."""
    value = join.fetch(profile)
    if b"\n" in value:
        raise RackbootError(f"{join.url(profile)}: the answer has more than one line; a k3s token has one")
    changed = system.place(value + b"\n", path, 0o600)
    return {"source": join.url(profile), "file": str(path), "changed": changed}


def _differs(path: Path, value: bytes) -> bool:
    try:
        return path.read_bytes().strip() != value
    except FileNotFoundError:
        return True


def _server_token_secret(datastore: Path) -> bytes | None:
    """The secret k3s's datastore now takes: k3s keeps K10<hash>::server:SECRET
    in server/token, next to the datastore, and rewrites it when rotated."""
    try:
        full = (datastore.parent / "token").read_bytes().strip()
    except OSError:
        return None
    return k3s_token_password(full)


def k3s_token_password(token: bytes) -> bytes | None:
    """The password k3s takes from a token, by k3s's own rule (pkg/clientaccess
    token.go parseToken, through util.NormalizeToken): a bare value is all
    password, colons included; K10<CA hash>::USER:PASSWORD splits at the first
    '::' and then at the first ':', so the password is everything after
    '::server:' and may hold ':' itself. None where k3s finds no password: an
    empty token, a CA hash that is not 64 characters, no ':' in the
    credentials, an empty password, or a kubeadm bootstrap token (ID.SECRET,
    which has none)."""
    if not token:
        return None
    if not token.startswith(K3S_TOKEN_PREFIX):
        if BOOTSTRAP_TOKEN.fullmatch(token):
            return None
        return token
    ca_hash, separator, credentials = token[len(K3S_TOKEN_PREFIX):].partition(b"::")
    if not separator:
        credentials = ca_hash           # K10 without '::': k3s reads the rest as credentials
    elif ca_hash and len(ca_hash) != K3S_CA_HASH_LENGTH:
        return None
    if BOOTSTRAP_TOKEN.fullmatch(credentials):
        return None
    _user, colon, password = credentials.partition(b":")
    return password if colon and password else None
