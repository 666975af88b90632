"""A rack's kubeconfig for the operator, made from the one k3s writes on its
jumphost (/etc/rancher/k3s/k3s.yaml: cluster, user and context all named
`default`, server https://127.0.0.1:API_PORT).

The operator's copy names cluster, user and context after the rack (so a
prompt or `kubectl config current-context` says which rack a shell is on) and
points the server at the local end of the forward, https://127.0.0.1:PORT.
TLS is still verified against the cluster's CA: k3s's serving certificate
names 127.0.0.1 (as the k3s stand-in's does). A kubeconfig without a CA, or
one that skips verification, is refused. So is a user that is more than
credentials (an `exec` or `auth-provider` plugin, files named by path): the
operator's kubectl would run or read what the jumphost wrote there. Its
client key is a cluster-admin credential: nothing here ever shows a value.
"""

import base64
import binascii

import yaml

from firstboot.errors import RackbootError


# What k3s's admin user holds, and a bearer token: credentials, nothing that runs.
USER_KEYS = {"client-certificate-data", "client-key-data", "token"}


class NotK3sKubeconfig(RackbootError):
    pass


def _credentials(user: dict) -> dict:
    other = sorted(set(user) - USER_KEYS)
    if other:
        raise NotK3sKubeconfig(f"its user has {', '.join(other)}, which attach does not pass on (only "
                               f"{', '.join(sorted(USER_KEYS))})")
    if not user:
        raise NotK3sKubeconfig("its user has no credentials")
    return user


def _named(entries, name: str, what: str) -> dict:
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(what), dict):
            return entry[what]
    raise NotK3sKubeconfig(f"it has no {what} named by its current context")


def _ca_pem(cluster: dict) -> str:
    if cluster.get("insecure-skip-tls-verify"):
        raise NotK3sKubeconfig("it skips TLS verification (insecure-skip-tls-verify)")
    try:
        pem = base64.b64decode(cluster.get("certificate-authority-data", ""), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, TypeError):
        pem = ""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise NotK3sKubeconfig("its cluster has no certificate-authority-data (a PEM CA certificate)")
    return pem


def for_rack(text: str, rack: str, port: int) -> tuple[bytes, str]:
    """(the operator's kubeconfig for rack, the cluster's CA in PEM)."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        raise NotK3sKubeconfig("it is not YAML") from None
    if not isinstance(config, dict) or config.get("kind") != "Config":
        raise NotK3sKubeconfig("it is not a kubeconfig (kind: Config)")
    context = _named(config.get("contexts"), config.get("current-context"), "context")
    cluster = _named(config.get("clusters"), context.get("cluster"), "cluster")
    user = _credentials(_named(config.get("users"), context.get("user"), "user"))
    ca = _ca_pem(cluster)
    ours = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": rack, "cluster": {"certificate-authority-data": cluster["certificate-authority-data"],
                                                "server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": rack, "user": user}],
        "contexts": [{"name": rack, "context": {"cluster": rack, "user": rack}}],
        "current-context": rack,
    }
    return yaml.safe_dump(ours, sort_keys=False).encode(), ca
