#!/usr/bin/env python3
"""Stands in for the real k3s binary (k3s-io/k3s); against real k3s (untested here: no real bundle on this machine): RACKBOOT_K3S_BUNDLE=DIR, a bundle from `./build.py fetch-k3s`, for the pretend-machine and VM tests.

It is what a test bundle carries as `k3s` / `k3s-arm64`, so the agent installs
and runs it exactly as it would the real binary. It implements the part of
k3s's command line, files and protocols that rackboot relies on:

  k3s --version
  k3s server   reads --config / K3S_CONFIG_FILE (default /etc/rancher/k3s/config.yaml)
               and config.yaml.d/*.yaml; keys: SERVER_FLAGS below (token,
               token-file, node-name, node-ip, node-label, https-listen-port,
               write-kubeconfig, write-kubeconfig-mode, data-dir, tls-san,
               disable, agent-token, agent-token-file: a second secret that
               joins agents only; written to DATA/server/agent-token as k3s
               does). Another key is logged "Unknown flag --KEY found in
               config.yaml, skipping" and skipped, as k3s does.
               Uses the CA files it finds in DATA/server/tls (server, client,
               request-header, etcd/server, etcd/peer: NAME-ca.crt and .key;
               service.key) and makes those missing, as k3s does; stops as
               k3s would on a certificate or key that does not parse or a
               key that is not its certificate's. The token's CA hash is
               k3s's hashCA (a bundle's: its root's). Makes its certificates
               (openssl), the admin kubeconfig,
               registers its own node, serves a Kubernetes API over HTTPS
               (client-certificate auth) and the join endpoints, keeps its
               datastore in DATA/server/db, sends sd_notify READY=1.
               Tokens as k3s keeps them: DATA/server/cred/passwd (CSV
               password,user,user,role: user server = the server token, role
               k3s:server; user node = the agent token, or the server's
               password when none is set, role k3s:agent), server/token
               ("K10<sha256 of CA>::server:SECRET"), node-token (a symlink to
               token), agent-token ("K10...::node:AGENT" when an agent token is
               set, else a symlink to token). The bootstrap data is kept under
               the key k3s derives from the server token (--token, else
               server/token): started with another token, the server stops with
               k3s's "bootstrap data already found and encrypted with different
               token". The join endpoints check basic auth against cred/passwd
               as read at start: user node only (401 for a wrong password, so
               the server token is refused there when an agent token is set;
               403 for user server).
  k3s token rotate --token OLD --new-token NEW [--server URL]
               asks the running server (user server, OLD) to take NEW, as k3s
               does: cred/passwd's server user (and node, when it had OLD and
               no agent token is set) and server/token are rewritten and the
               bootstrap data moves to NEW's key; the running server still
               authenticates with what it read at start, so NEW is taken from
               its next start on, and OLD is then refused.
  k3s agent    reads the same config (AGENT_FLAGS: server, token, token-file,
               node-name, node-label); another key in it stops the agent
               ("flag provided but not defined"), as k3s's agent does; pins
               the server CA when the token is K10-style; presents the token
               as user node and /etc/rancher/node/password; a node name
               already registered with another password gets k3s's "Node
               password rejected" and is retried, as the real agent does.
               It joins once, at start (kubelet identity in DATA/agent/
               client-kubelet.crt/.key, node registered), sends READY=1, and
               then its kubelet posts the node's status with that identity
               every K3S_STANDIN_NODE_STATUS_FREQUENCY seconds (10, the
               kubelet's nodeStatusUpdateFrequency): a running agent needs no
               token again. As with k3s and the kubelet, a running agent
               never re-fetches the server's CA nor re-registers its Node
               (k3s pkg/agent/config config.go get() fetches /cacerts and
               writes agent/server-ca.crt at start only; kubelet_node_status.go
               registerWithAPIServer returns once registrationCompleted): a
               server with another CA fails its kubelet's TLS, and one whose
               datastore lacks its Node answers its status posts 404, for
               good, until the agent restarts. A restart with a token
               without CA hash trusts what /cacerts serves, with k3s's
               warning (clientaccess token.go validateCAHash). Its Node's
               nodeInfo (bootID, machineID, kernelVersion, architecture) is
               the agent's own machine's, as the kubelet reports it.
               Server and agent refuse to start with node labels in the
               kubernetes.io / k8s.io namespaces that a kubelet may not set
               (kubelet's --node-labels check; node-restriction.kubernetes.io/*
               among them), with the kubelet's message.
  GET /v1-k3s/client-kubelet.crt   (join token in basic auth, k3s-Node-Name and
               k3s-Node-Password) a node's kubelet identity, as k3s issues it:
               a client certificate for system:node:NAME.

The Kubernetes API is a small in-memory server persisted as JSON
(tests/doubles/k8s_api): discovery, get/list (label selectors), create,
replace, delete, JSON merge patch and server-side apply, as strict as the
real API server (v1.31) on what rackboot sends: bodies decoded against the
version's OpenAPI schemas (kubernetes-validate's), validation's 422s (names,
labels, required and immutable fields, Secret and ConfigMap data), apply's
per-manager field ownership in managedFields (409 on conflicts unless
forced), dryRun=All, and namespaces that go through Terminating.
A node's identity (its kubelet certificate, or the bearer token the join
returned) is held to what the real API server allows it: the Node authorizer
and RBAC's system:node role (read nodes, pods, services; a Secret, ConfigMap
or claim only when a pod bound to the node uses it) and NodeRestriction
admission (it writes its own Node only, and adds, changes or removes no
node-restriction.kubernetes.io/ or other kubelet-forbidden labels, nor
taints), refused with the API server's 403 Status and messages.
Nodes: a kubelet registers its Node NotReady (Ready False, KubeletNotReady)
and makes it Ready when it posts its status (the agent's, or the server's own
kubelet, after K3S_STANDIN_KUBELET_DELAY seconds: 0, or "never", when the
node stays NotReady). The node lifecycle controller is simulated: a node whose
kubelet posted nothing for K3S_STANDIN_NODE_GRACE seconds (40, Kubernetes
v1.31's --node-monitor-grace-period) gets Ready Unknown (NodeStatusUnknown,
"Kubelet stopped posting node status.") and the node.kubernetes.io/unreachable
NoSchedule and NoExecute taints, until its kubelet posts again.
ServiceLB is simulated (k8s_api/servicelb.py, hostports.py, traefik.py):
unless `disable` has traefik, the server makes traefik's LoadBalancer Service
kube-system/traefik (ports 80, 443); unless it has servicelb, svclb pods go
on the nodes k3s's enablelb label picks, their host ports listen on those
nodes (the server's own and each agent's network namespace) and answer as
traefik routes the cluster's Ingress rules, and the Services' status lists
those nodes' addresses.
Workload controllers are simulated: Deployments, StatefulSets, DaemonSets and
Jobs report themselves ready once applied, because no containers run here.
K3S_STANDIN_API_DELAY=SECONDS slows every API request (fault tests);
K3S_STANDIN_NAMESPACE_DELAY=SECONDS (0.5) is how long a deleted namespace
stays Terminating.
Only the standard library and the openssl command are used, so the stand-in
runs unchanged inside the images (Debian's python3, ca-certificates' openssl):
a bundle's `k3s` is a zip application of this file, k8s_api and the
version's schemas (tests/doubles/k3s_standin_bundle.py).
"""

import base64
import copy
import csv
import hashlib
import http.server
import io
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

if __package__:      # imported by the tests (tests.doubles.k3s_standin)
    from .k8s_api import hostports, servicelb, status, traefik, writes
    from .k8s_api.schema import Schemas
    from .k8s_api.status import ApiError, forbidden
    from .k8s_api.store import SYSTEM_NAMESPACES, Store, write_private
else:                # run: from the source tree, or as a bundle's `k3s` (a zip application)
    from k8s_api import hostports, servicelb, status, traefik, writes
    from k8s_api.schema import Schemas
    from k8s_api.status import ApiError, forbidden
    from k8s_api.store import SYSTEM_NAMESPACES, Store, write_private

VERSION = "v1.31.4+k3s1"
NODE_PASSWORD_FILE = Path("/etc/rancher/node/password")
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")   # DNS-1123 subdomain
REJECTED = ("Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' "
            "may not match server node-passwd entry, try enabling a unique node name with the "
            "--with-node-id flag")
# The flags of `k3s agent` and `k3s server` this stand-in takes, from config
# files and the command line: the single list of keys rackboot may render
# (tests/test_render.py checks against it). Real k3s has many more; a key
# outside these is unknown here, as a misspelt key is to k3s (load_config).
# snapshotter and prefer-bundled-bin are taken and have no effect (no containers run).
AGENT_FLAGS = frozenset({"server", "token", "token-file", "node-name", "node-ip", "node-label", "data-dir",
                         "snapshotter", "prefer-bundled-bin"})
SERVER_FLAGS = frozenset({"token", "token-file", "agent-token", "agent-token-file", "node-name", "node-ip",
                          "node-label", "https-listen-port", "write-kubeconfig", "write-kubeconfig-mode",
                          "data-dir", "tls-san", "disable", "snapshotter", "prefer-bundled-bin"})
LIST_FLAGS = frozenset({"node-label", "tls-san", "disable"})

# group, version, kind, plural, namespaced
RESOURCES = [
    ("", "v1", "Namespace", "namespaces", False),
    ("", "v1", "Node", "nodes", False),
    ("", "v1", "ConfigMap", "configmaps", True),
    ("", "v1", "Secret", "secrets", True),
    ("", "v1", "Service", "services", True),
    ("", "v1", "ServiceAccount", "serviceaccounts", True),
    ("", "v1", "Pod", "pods", True),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True),
    ("apps", "v1", "Deployment", "deployments", True),
    ("apps", "v1", "StatefulSet", "statefulsets", True),
    ("apps", "v1", "DaemonSet", "daemonsets", True),
    ("batch", "v1", "Job", "jobs", True),
    ("batch", "v1", "CronJob", "cronjobs", True),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", True),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
]
BY_PATH = {(g, v, plural): (kind, namespaced) for g, v, kind, plural, namespaced in RESOURCES}


def log(message: str) -> None:
    # k3s logs logrus-style lines to stderr; systemd puts them in the journal.
    print(f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level=info msg="{message}"',
          file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level=warning msg="{message}"',
          file=sys.stderr, flush=True)


def fatal(message: str) -> None:
    print(f'time="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}" level=fatal msg="{message}"',
          file=sys.stderr, flush=True)
    sys.exit(1)


def sd_notify(text: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(text.encode())


# --- configuration -----------------------------------------------------------

def parse_yaml_config(text: str, source: str) -> dict:
    """k3s's config files are flat: `key: value` or `key:` followed by `- item`
    lines. That subset, parsed without PyYAML so the stand-in needs nothing."""
    config, current = {}, None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line.lstrip().startswith("- ") and current is not None:
            config[current].append(_scalar(line.lstrip()[2:]))
        elif ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            if value.strip():
                config[key.strip()], current = _scalar(value.strip()), None
            else:
                config[key.strip()], current = [], key.strip()
        else:
            fatal(f"{source}:{number}: cannot parse {raw!r}")
    return config


def _scalar(text: str):
    text = text.strip()
    if text[:1] in "\"'":
        return json.loads(text) if text[0] == '"' else text[1:-1]
    return int(text) if text.isdigit() else text


def load_config(argv: list[str], command: str) -> dict:
    """k3s's configuration as k3s reads it (pkg/configfilearg): config.yaml,
    then config.yaml.d/*.yaml in name order (a later file's key replaces an
    earlier one's; KEY+ appends to a list), then the command line. A key
    `k3s server` does not know is logged "Unknown flag ... skipping" and
    skipped: k3s carries on. `k3s agent` does not filter its config, so its
    flag parser refuses the key and k3s exits, as on the command line."""
    known = SERVER_FLAGS if command == "server" else AGENT_FLAGS
    path = Path(os.environ.get("K3S_CONFIG_FILE", "/etc/rancher/k3s/config.yaml"))
    flags = {}
    args = iter(argv)
    for arg in args:
        if arg in ("--config", "-c"):
            path = Path(next(args))
        elif arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            if key not in known:
                fatal(f"flag provided but not defined: -{key}")
            flags.setdefault(key, []).append(value if value else next(args))
        else:
            fatal(f"unexpected argument {arg!r}")
    config = {}
    files = [path] if path.exists() else []
    files += sorted(p for p in Path(str(path) + ".d").glob("*")
                     if p.suffix.lower() in (".yaml", ".yml") and p.is_file())
    for file in files:
        for key, value in parse_yaml_config(file.read_text(), str(file)).items():
            append, key = key.endswith("+"), key.removesuffix("+")
            if key not in known:
                if command != "server":
                    fatal(f"flag provided but not defined: -{key}")
                warn(f"Unknown flag --{key} found in config.yaml, skipping")
                continue
            if append and key in config:
                config[key] = _as_list(config[key]) + _as_list(value)
            else:
                config[key] = value
    for key, values in flags.items():
        config[key] = (_as_list(config.get(key, [])) + values) if key in LIST_FLAGS else values[-1]
    if "K3S_TOKEN" in os.environ:
        config.setdefault("token", os.environ["K3S_TOKEN"])
    if "K3S_URL" in os.environ:
        config.setdefault("server", os.environ["K3S_URL"])
    return config


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def read_token(config: dict, key: str = "token") -> str:
    """The value of key (token, agent-token) or of the file key-file names."""
    if config.get(key):
        return str(config[key]).strip()
    if config.get(f"{key}-file"):
        try:
            return Path(config[f"{key}-file"]).read_text().strip()
        except OSError as err:
            fatal(f"reading {key} file {config[f'{key}-file']}: {err.strerror}")
    return ""


BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")    # kubeadm's ID.SECRET


def parse_token(token: str) -> tuple[str, str]:
    """(CA hash, password) by k3s's rule (pkg/clientaccess/token.go parseToken):
    a bare value is all password, colons included; K10<hash>::USER:PASSWORD
    splits at the first '::', then at the first ':' (so the password is all
    after '::server:'). Bootstrap tokens (ID.SECRET) are not implemented here."""
    if not token.startswith("K10"):
        token = "K10::" + token if BOOTSTRAP_TOKEN.fullmatch(token) else "K10:::" + token
    ca_hash, separator, credentials = token[3:].partition("::")
    if not separator:
        ca_hash, credentials = "", ca_hash
    elif ca_hash and len(ca_hash) != 64:
        fatal("invalid token CA hash length")
    if BOOTSTRAP_TOKEN.fullmatch(credentials):
        fatal("k3s stand-in: bootstrap tokens (ID.SECRET) are not implemented")
    _user, colon, password = credentials.partition(":")
    if not colon or not password:
        fatal("invalid token format")
    return ca_hash, password


def token_secret(token: str) -> str:
    return parse_token(token)[1]


def read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def bootstrap_key(password: str) -> str:
    """Where k3s stores the bootstrap data encrypted with password (pkg/cluster
    encrypt.go storageKey: /bootstrap/ and the first 12 hex digits of its SHA-256)."""
    return "/bootstrap/" + hashlib.sha256(password.encode()).hexdigest()[:12]


def read_passwd(path: Path) -> dict[str, tuple[str, str]]:
    """k3s's cred/passwd (pkg/passwd): CSV records password,name,uid,role."""
    try:
        with open(path, newline="") as source:
            return {record[1]: (record[0], record[3] if len(record) > 3 else "") for record in csv.reader(source)}
    except FileNotFoundError:
        return {}


def write_passwd(path: Path, users: dict[str, tuple[str, str]]) -> None:
    lines = []
    for name, (password, role) in users.items():
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([password, name, name, role])
        lines.append(out.getvalue())
    write_private(path, "".join(lines))


def labels_from(config: dict) -> dict:
    labels = {}
    for item in config.get("node-label") or []:
        key, _, value = str(item).partition("=")
        labels[key] = value
    return labels


# What a kubelet may set on its own Node (kubernetes: pkg/kubelet/apis/well_known_labels.go,
# as of v1.31): these keys, and the kubelet.kubernetes.io and node.kubernetes.io namespaces.
KUBELET_LABELS = ("beta.kubernetes.io/arch", "beta.kubernetes.io/instance-type", "beta.kubernetes.io/os",
                  "failure-domain.beta.kubernetes.io/region", "failure-domain.beta.kubernetes.io/zone",
                  "kubernetes.io/arch", "kubernetes.io/hostname", "kubernetes.io/os",
                  "node.kubernetes.io/instance-type", "topology.kubernetes.io/region", "topology.kubernetes.io/zone")
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
NODE_RESTRICTION_NAMESPACE = "node-restriction.kubernetes.io"


def _label_namespace(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def _in_namespace(key: str, namespace: str) -> bool:
    return _label_namespace(key) == namespace or _label_namespace(key).endswith("." + namespace)


def is_kubernetes_label(key: str) -> bool:
    return _in_namespace(key, "kubernetes.io") or _in_namespace(key, "k8s.io")


def is_kubelet_label(key: str) -> bool:
    return key in KUBELET_LABELS or any(_in_namespace(key, ns) for ns in KUBELET_LABEL_NAMESPACES)


def check_kubelet_labels(labels: dict) -> None:
    """kubelet refuses to start with such --node-labels (cmd/kubelet/app/options: ValidateKubeletFlags),
    and k3s, which runs the kubelet, exits with it."""
    unknown = sorted(k for k in labels if is_kubernetes_label(k) and not is_kubelet_label(k))
    if unknown:
        fatal("kubelet exited: failed to validate kubelet flags: unknown 'kubernetes.io' or 'k8s.io' labels "
              f"specified with --node-labels: [{' '.join(unknown)}]\n--node-labels in the 'kubernetes.io' "
              f"namespace must begin with an allowed prefix ({', '.join(KUBELET_LABEL_NAMESPACES)}) or be in "
              f"the specifically allowed set ({', '.join(KUBELET_LABELS)})")


def forbidden_node_labels(new: dict, old: dict) -> list[str]:
    """Labels a node may not add, change or remove on its own Node (NodeRestriction admission,
    plugin/pkg/admission/noderestriction: getForbiddenLabels)."""
    modified = {k for k in {*new, *old} if new.get(k) != old.get(k) or (k in new) != (k in old)}
    return sorted(k for k in modified if _in_namespace(k, NODE_RESTRICTION_NAMESPACE)
                  or (is_kubernetes_label(k) and not is_kubelet_label(k)))


# --- certificates ------------------------------------------------------------

def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# The cluster's CAs (pkg/daemons/control/deps/deps.go CreateRuntimeCertFiles),
# each NAME.crt and NAME.key under server/tls, and service.key, the service-
# account signing key. Placed there before the first start, they are k3s's
# ("Using Custom CA Certificates"); missing, k3s makes them.
CA_NAMES = ("client-ca", "server-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca")
SERVICE_KEY = "service.key"
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", re.S)


def make_ca(directory: Path, name: str) -> None:
    """deps.go createSigningCertKey: kept when both NAME.crt and NAME.key
    exist; otherwise a self-signed CA certificate is written with the key
    that is there (certutil.LoadOrGenerateKeyFile), or a new EC key."""
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    if crt.exists() and key.exists():
        return
    crt.parent.mkdir(parents=True, exist_ok=True)
    subject = f"/CN={'' if name.startswith('etcd/') else 'k3s-'}{name.replace('/', '-')}@{int(time.time())}"
    new_key = ["-key", str(key)] if key.exists() else \
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]
    openssl("req", "-x509", *new_key, "-out", str(crt), "-days", "3650", "-subj", subject,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,digitalSignature,"
            "keyEncipherment,keyCertSign")
    key.chmod(0o600)


def make_service_key(directory: Path) -> None:
    """deps.go genServiceAccount: an RSA key when service.key is missing."""
    if not (directory / SERVICE_KEY).exists():
        openssl("genrsa", "-traditional", "-out", str(directory / SERVICE_KEY), "2048")
        (directory / SERVICE_KEY).chmod(0o600)


def check_cas(directory: Path) -> None:
    """What k3s's start makes of the CA files: each .crt must parse
    (certutil.CertsFromFile) and each key be its certificate's, for Go's
    x509.CreateCertificate refuses to sign the leaf certificates with any
    other; service.key must parse (keyutil.PrivateKeyFromFile)."""
    for name in CA_NAMES:
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        try:
            certificate_key = openssl_output("x509", "-in", str(crt), "-noout", "-pubkey")
        except subprocess.CalledProcessError:
            fatal(f"failed to read certificates from {crt}: data does not contain any valid RSA or ECDSA certificates")
        try:
            private_key = openssl_output("pkey", "-in", str(key), "-pubout")
        except subprocess.CalledProcessError:
            fatal(f"failed to read private key from {key}: data does not contain a valid RSA or ECDSA private key")
        if certificate_key != private_key:
            fatal(f"x509: provided PrivateKey doesn't match parent's PublicKey ({crt})")
    try:
        openssl_output("pkey", "-in", str(directory / SERVICE_KEY), "-noout")
    except subprocess.CalledProcessError:
        fatal(f"error reading private key file {directory / SERVICE_KEY}: data does not contain a valid RSA or "
              "ECDSA private key")


def openssl_output(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


_CA_HASHES: dict[bytes, str] = {}


def ca_hash(bundle: bytes) -> str:
    """k3s's hashCA (pkg/clientaccess/token.go): the SHA-256 of the file as
    it is when it holds one certificate; when it holds more, of the DER of
    the root its first certificate verifies to through the others (so a
    token's CA hash survives renewing the CAs under one root). A root here
    is a self-signed certificate of the bundle."""
    if bundle not in _CA_HASHES:
        certificates = PEM_CERTIFICATE.findall(bundle.decode(errors="replace"))
        root = verified_root(certificates) if len(certificates) > 1 else None
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(root) if root else bundle).hexdigest()
        _CA_HASHES[bundle] = digest
    return _CA_HASHES[bundle]


def verified_root(certificates: list[str]) -> str | None:
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for number, certificate in enumerate(certificates):
            paths.append(Path(scratch) / f"{number}.pem")
            paths[-1].write_text(certificate)

        def verifies(leaf: Path, root: Path, untrusted: list[Path]) -> bool:
            bundle = Path(scratch) / "untrusted.pem"
            bundle.write_text("".join(p.read_text() for p in untrusted))
            extra = ["-untrusted", str(bundle)] if untrusted else []
            return subprocess.run(["openssl", "verify", "-CAfile", str(root), *extra, str(leaf)],
                                  capture_output=True).returncode == 0
        roots = [path for path in paths[1:] if verifies(path, path, [])]
        others = [path for path in paths[1:] if path not in roots]
        for root in roots:
            if verifies(paths[0], root, others):
                return root.read_text()
    return None


def sign(directory: Path, ca: str, name: str, subject: str, extensions: str) -> None:
    ext = directory / f"{name}.ext"
    ext.write_text(extensions + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.csr"),
            "-subj", subject)
    openssl("x509", "-req", "-in", str(directory / f"{name}.csr"), "-CA", str(directory / f"{ca}.crt"),
            "-CAkey", str(directory / f"{ca}.key"), "-CAcreateserial", "-days", "365",
            "-out", str(directory / f"{name}.crt"), "-extfile", str(ext))
    for leftover in (ext, directory / f"{name}.csr"):
        leftover.unlink()


# --- the Kubernetes API (tests/doubles/k8s_api) -------------------------------


def pod_references(spec: dict, what: str) -> set[str]:
    """Names of the secrets, configMaps or persistentVolumeClaims a pod spec uses."""
    names = set()
    for volume in spec.get("volumes") or []:
        source = volume.get(what) or {}
        names.add(source.get("secretName") if what == "secret" else
                  source.get("claimName") if what == "persistentVolumeClaim" else source.get("name"))
        for projected in (volume.get("projected") or {}).get("sources") or []:
            names.add((projected.get(what) or {}).get("name"))
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for env in container.get("env") or []:
            names.add(((env.get("valueFrom") or {}).get(f"{what}KeyRef") or {}).get("name"))
        for source in container.get("envFrom") or []:
            names.add((source.get(f"{what}Ref") or {}).get("name"))
    if what == "secret":
        names.update(ref.get("name") for ref in spec.get("imagePullSecrets") or [])
    return names - {None}


def node_password() -> str:
    """k3s reads /etc/rancher/node/password, or makes a random one and keeps it there."""
    if NODE_PASSWORD_FILE.exists():
        return NODE_PASSWORD_FILE.read_text().strip()
    password = secrets.token_hex(16)
    write_private(NODE_PASSWORD_FILE, password + "\n")
    return password


GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
NODE_INFO_KEYS = ("machineID", "systemUUID", "bootID", "kernelVersion", "architecture")


def node_info() -> dict:
    """What a kubelet reports of its own machine (pkg/kubelet/nodestatus
    MachineInfo, VersionInfo): this machine's, never its server's."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = machine_id()
    return {"machineID": machine_id(), "systemUUID": machine_id(), "bootID": boot_id,
            "kernelVersion": os.uname().release, "architecture": GOARCH.get(os.uname().machine, os.uname().machine)}


def new_node(name: str, labels: dict, address: str, role: str, info: dict) -> dict:
    """A Node as its kubelet registers it (info: its node_info()): not Ready until it posts its status."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "node.kubernetes.io/instance-type": "k3s", **role_labels(role),
                                                  **labels}},
            "spec": {"podCIDR": "10.42.0.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                       "lastHeartbeatTime": now, "lastTransitionTime": now,
                                       "message": "container runtime status check may not have completed yet"}],
                       "addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}],
                       "nodeInfo": {"kubeletVersion": VERSION, "kubeProxyVersion": VERSION,
                                    "osImage": "rackboot", "operatingSystem": "linux",
                                    "containerRuntimeVersion": "containerd://1.7.23-k3s2", **info}}}


UNREACHABLE = "node.kubernetes.io/unreachable"
NODE_MONITOR_PERIOD = 5.0       # kube-controller-manager --node-monitor-period


def _ready_condition(node: dict) -> dict:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition
    return {}


def _set_taints(node: dict, taints: list) -> None:
    spec = node.setdefault("spec", {})
    if taints:
        spec["taints"] = taints
    else:
        spec.pop("taints", None)


def unreachable(node: dict) -> dict:
    """node as the node lifecycle controller leaves one whose kubelet went
    silent (pkg/controller/nodelifecycle: tryUpdateNodeHealth, and the taints
    for an Unknown Ready condition)."""
    node = copy.deepcopy(node)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = _ready_condition(node)
    heartbeat = ready.get("lastHeartbeatTime", now)
    node["status"]["conditions"] = [c for c in node["status"]["conditions"] if c["type"] != "Ready"] + [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
         "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": heartbeat,
         "lastTransitionTime": now}]
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t["key"] != UNREACHABLE]
    _set_taints(node, taints + [{"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now},
                                {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now}])
    return node


def kubelet_delay() -> float:
    """K3S_STANDIN_KUBELET_DELAY: seconds before a kubelet first posts its
    node's status ("never": it never does, its node stays NotReady)."""
    delay = os.environ.get("K3S_STANDIN_KUBELET_DELAY", "0")
    return float("inf") if delay == "never" else float(delay)


def post_status(post) -> None:
    """A kubelet's status loop: post (after K3S_STANDIN_KUBELET_DELAY), then
    every nodeStatusUpdateFrequency (10 s; K3S_STANDIN_NODE_STATUS_FREQUENCY),
    whatever the answer; a failure is logged and the next one tried."""
    delay = kubelet_delay()
    if delay == float("inf"):
        return
    time.sleep(delay)
    frequency = float(os.environ.get("K3S_STANDIN_NODE_STATUS_FREQUENCY", "10"))
    while True:
        try:
            post()
        except (ApiError, urllib.error.URLError, OSError) as err:
            log(f"Error updating node status, will retry: {getattr(err, 'message', None) or err}")
        time.sleep(frequency)


def machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip() or "0" * 32
    except OSError:
        return "0" * 32


def role_labels(role: str) -> dict:
    if role == "server":
        return {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"}
    return {}


class Server:
    def __init__(self, config: dict):
        self.config = config
        self.data = Path(config.get("data-dir", "/var/lib/rancher/k3s"))
        self.tls = self.data / "server/tls"
        self.passwd_file = self.data / "server/cred/passwd"
        self.node_name = str(config.get("node-name") or socket.gethostname())
        self.address = str(config.get("node-ip") or "127.0.0.1")
        self.port = int(config.get("https-listen-port", 6443))
        self.delay = float(os.environ.get("K3S_STANDIN_API_DELAY", "0"))
        self.agent_tokens: dict[str, str] = {}
        self.heard: dict[str, float] = {}      # node -> when its kubelet last posted (monotonic)
        self.node_grace = float(os.environ.get("K3S_STANDIN_NODE_GRACE", "40"))

    def start(self) -> None:
        check_kubelet_labels(labels_from(self.config))    # k3s runs a kubelet beside the server
        self.tls.mkdir(parents=True, exist_ok=True)
        for ca in CA_NAMES:
            make_ca(self.tls, ca)
        make_service_key(self.tls)
        check_cas(self.tls)
        sans = ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", f"IP:{self.address}", f"DNS:{self.node_name}"]
        sans += [f"IP:{s}" if s.replace(".", "").isdigit() else f"DNS:{s}" for s in self.config.get("tls-san") or []]
        sign(self.tls, "server-ca", "serving-kube-apiserver", "/CN=kube-apiserver",
             "subjectAltName=" + ",".join(sans))
        if not (self.tls / "client-admin.crt").exists():
            sign(self.tls, "client-ca", "client-admin", "/O=system:masters/CN=system:admin",
                 "extendedKeyUsage=clientAuth")
        self.store = Store(self.data / "server/db/standin-state.json")
        self.api = writes.Api(self.store, Schemas.load(VERSION))
        self.take_tokens(read_token(self.config), read_token(self.config, "agent-token"))
        for namespace in SYSTEM_NAMESPACES:
            self.store.ensure_namespace(namespace)
        self.register(self.node_name, node_password(), labels_from(self.config), self.address, "server",
                      node_info())
        self.packaged_components()
        threading.Thread(target=self.monitor_nodes, daemon=True).start()
        threading.Thread(target=self.own_kubelet, daemon=True).start()
        self.write_kubeconfig()
        handler = type("Handler", (ApiHandler,), {"server_state": self})
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls / "serving-kube-apiserver.crt", self.tls / "serving-kube-apiserver.key")
        context.load_verify_locations(self.tls / "client-ca.crt")
        context.verify_mode = ssl.CERT_OPTIONAL
        httpd = TlsServer(("0.0.0.0", self.port), handler, context)
        log(f"k3s stand-in {VERSION} server listening on :{self.port}, node {self.node_name}")
        sd_notify("READY=1")
        httpd.serve_forever()

    # --- tokens, where and as k3s keeps them ----------------------------------

    def ca_hash(self) -> str:
        return ca_hash((self.tls / "server-ca.crt").read_bytes())

    def take_tokens(self, token: str, agent_token: str) -> None:
        """k3s at start. The bootstrap data in the datastore is stored under a
        key derived from the server token (--token, else server/token) and
        encrypted with it (pkg/cluster storage.go): data under another token's
        key stops the server. Then genUsers (pkg/daemons/control/deps):
        cred/passwd gets user server (--token, else the password it has, else a
        random one) and user node (--agent-token, else the server's password).
        The join endpoints' authenticator is read from cred/passwd now, once."""
        if token and parse_token(token)[0] not in ("", self.ca_hash()):
            fatal("token CA hash does not match the Cluster CA certificate hash")
        bootstrap_token = token or read_text(self.data / "server/token")
        saved = self.store.extra.get("bootstrap")
        if bootstrap_token and saved and saved != bootstrap_key(token_secret(bootstrap_token)):
            fatal("starting kubernetes: preparing server: bootstrap data already found and encrypted "
                  "with different token")
        users = read_passwd(self.passwd_file)
        server = token_secret(token) if token else users.get("server", ("", ""))[0] or secrets.token_hex(16)
        node = token_secret(agent_token) if agent_token else server
        users.update(server=(server, "k3s:server"), node=(node, "k3s:agent"))
        write_passwd(self.passwd_file, users)
        self.users = dict(users)
        self.agent_token_set = bool(agent_token)
        with self.store.lock:
            self.store.extra.setdefault("bootstrap", bootstrap_key(server))
            self.store.save()
        self.write_token_files(server, node if agent_token else None)

    def write_token_files(self, server: str, agent: str | None) -> None:
        """server/token (0600, the secure form, user server); node-token, a
        symlink to it; agent-token: the agent token's own file (user node) when
        one is set, else a symlink to token (pkg/server printTokens)."""
        token_file = self.data / "server/token"
        write_private(token_file, f"K10{self.ca_hash()}::server:{server}\n")
        for name, own in (("node-token", None), ("agent-token", agent)):
            path = self.data / "server" / name
            if own is not None:
                if path.is_symlink():
                    path.unlink()
                write_private(path, f"K10{self.ca_hash()}::node:{own}\n")
            elif not path.is_symlink():
                path.unlink(missing_ok=True)
                path.symlink_to(token_file)

    def rotate_token(self, new: str) -> None:
        """k3s token rotate (pkg/server/handlers/token.go tokenRotate): user
        server takes NEW in cred/passwd, and user node too when it had the old
        password and no agent token is set; server/token is rewritten and the
        bootstrap data re-encrypted under NEW. The running server's
        authenticator is not rebuilt: NEW is taken from the next start on."""
        with self.store.lock:
            users = read_passwd(self.passwd_file)
            old = users["server"][0]
            new = new or secrets.token_hex(16)
            users["server"] = (new, "k3s:server")
            if users.get("node", ("", ""))[0] == old and not self.agent_token_set:
                users["node"] = (new, "k3s:agent")
            write_passwd(self.passwd_file, users)
            write_private(self.data / "server/token", f"K10{self.ca_hash()}::server:{new}\n")
            self.store.extra["bootstrap"] = bootstrap_key(new)
            self.store.save()

    def check_node_password(self, name: str, password: str) -> None:
        """k3s keeps a hash of each node's password in kube-system/NAME.node-password.k3s:
        the first password a name comes with is the one it must always come with."""
        if not NODE_NAME.fullmatch(name) or len(name) > 253:
            raise ApiError(400, "BadRequest", f"invalid node name {name!r}")
        secret_name = f"{name}.node-password.k3s"
        digest = hashlib.sha256(password.encode()).hexdigest()
        with self.store.lock:
            saved = self.store.get("secrets", "kube-system", secret_name)
            if saved and base64.b64decode(saved["data"]["hash"]).decode() != digest:
                raise ApiError(403, "Forbidden", REJECTED)
            if not saved:
                self.store.put("secrets", "kube-system", {
                    "apiVersion": "v1", "kind": "Secret", "type": "k3s.cattle.io/node-password",
                    "metadata": {"name": secret_name, "namespace": "kube-system"},
                    "data": {"hash": base64.b64encode(digest.encode()).decode()}})

    def kubelet_client_certificate(self, name: str) -> str:
        """A node's kubelet identity, as k3s issues it: a client certificate
        for system:node:NAME in the group system:nodes, and its key (PEM)."""
        with self.store.lock, tempfile.TemporaryDirectory(dir=self.tls) as scratch:
            directory = Path(scratch)
            for ca in ("client-ca.crt", "client-ca.key"):
                os.symlink(self.tls / ca, directory / ca)
            sign(directory, "client-ca", "client-kubelet", f"/O=system:nodes/CN=system:node:{name}",
                 "extendedKeyUsage=clientAuth")
            return (directory / "client-kubelet.crt").read_text() + (directory / "client-kubelet.key").read_text()

    def register(self, name: str, password: str, labels: dict, address: str, role: str, info: dict) -> None:
        self.check_node_password(name, password)
        node = new_node(name, labels, address, role, info)
        old = self.store.get("nodes", "", name)
        if role == "agent":      # the kubelet registers its Node with its own identity: NodeRestriction
            if not old:
                claimed = forbidden_node_labels(node["metadata"]["labels"], {})
                why = f'node "{name}" is not allowed to set the following labels: '
            else:
                previous = old["metadata"].get("labels", {})
                claimed = forbidden_node_labels({**previous, **node["metadata"]["labels"]}, previous)
                why = "is not allowed to modify labels: "
            if claimed:
                raise forbidden("nodes", name, why + ", ".join(claimed))
        if old:      # a kubelet that registers again finds its Node as it was: conditions, taints
            node["metadata"]["labels"] = {**old["metadata"].get("labels", {}), **node["metadata"]["labels"]}
            node["spec"] = old.get("spec") or node["spec"]
            node["status"]["conditions"] = (old.get("status") or {}).get("conditions") or node["status"]["conditions"]
        with self.store.lock:
            self.store.put("nodes", "", node, status=True)
            self.heard.setdefault(name, time.monotonic())    # the node monitor's grace starts

    # --- node status: kubelets' heartbeats and the node lifecycle controller ---

    def heartbeat(self, name: str) -> None:
        """A kubelet posts its node's status: Ready, and the unreachable taints
        the node lifecycle controller put on it go."""
        with self.store.lock:
            self.heard[name] = time.monotonic()
            node = self.store.get("nodes", "", name)
            if node is None:
                raise status.not_found("nodes", name, "")
            ready = _ready_condition(node)
            taints = (node.get("spec") or {}).get("taints") or []
            if ready.get("status") == "True" and not any(t["key"] == UNREACHABLE for t in taints):
                return
            node = copy.deepcopy(node)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            ready.clear()
            ready.update(type="Ready", status="True", reason="KubeletReady", message="kubelet is posting ready status",
                         lastHeartbeatTime=now, lastTransitionTime=now)
            node["status"]["conditions"] = [c for c in node["status"]["conditions"] if c["type"] != "Ready"] + [ready]
            _set_taints(node, [t for t in taints if t["key"] != UNREACHABLE])
            self.store.put("nodes", "", node, status=True)
        log(f"node {name} is Ready")

    def monitor_nodes(self) -> None:
        """kube-controller-manager's node lifecycle controller: a node whose
        kubelet posted nothing for --node-monitor-grace-period (40 s in
        Kubernetes v1.31; K3S_STANDIN_NODE_GRACE) gets Ready Unknown
        (NodeStatusUnknown, "Kubelet stopped posting node status.") and the
        node.kubernetes.io/unreachable taints. It looks every
        --node-monitor-period (5 s)."""
        while True:
            time.sleep(min(NODE_MONITOR_PERIOD, self.node_grace / 4))
            with self.store.lock:
                for node in self.store.list("nodes"):
                    name = node["metadata"]["name"]
                    silent = time.monotonic() - self.heard.setdefault(name, time.monotonic())
                    if silent > self.node_grace and _ready_condition(node).get("status") != "Unknown":
                        self.store.put("nodes", "", unreachable(node), status=True)
                        log(f"node {name}: Kubelet stopped posting node status")

    def packaged_components(self) -> None:
        """k3s --disable: traefik's chart (its LoadBalancer Service here) and the
        ServiceLB controller run unless disabled; the own kubelet's svclb ports."""
        disabled = {part.strip() for item in self.config.get("disable") or [] for part in str(item).split(",")}
        if "traefik" not in disabled and not self.store.get("services", traefik.TRAEFIK_NAMESPACE, traefik.TRAEFIK_NAME):
            service = traefik.traefik_service()
            self.api.allocate_cluster_ip(service)
            self.store.put("services", traefik.TRAEFIK_NAMESPACE, service)
        servicelb.ServiceLB(self.store, enabled="servicelb" not in disabled).start()
        pods = lambda: self.store.list("pods", servicelb.LB_NAMESPACE, servicelb.SVC_NAME)   # noqa: E731
        threading.Thread(target=hostports.follow, daemon=True, args=(
            self.node_name, pods, lambda *request: traefik.answer(self.store, *request), log)).start()

    def own_kubelet(self) -> None:
        """The kubelet k3s runs beside the server posts its node's status."""
        post_status(lambda: self.heartbeat(self.node_name))

    def write_kubeconfig(self) -> None:
        def b64(name):
            return base64.b64encode((self.tls / name).read_bytes()).decode()
        path = Path(self.config.get("write-kubeconfig", "/etc/rancher/k3s/k3s.yaml"))
        mode = int(str(self.config.get("write-kubeconfig-mode", "0600")), 8)
        write_private(path, f"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {b64("server-ca.crt")}
    server: https://127.0.0.1:{self.port}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {{}}
users:
- name: default
  user:
    client-certificate-data: {b64("client-admin.crt")}
    client-key-data: {b64("client-admin.key")}
""", mode)


HANDSHAKE_SECONDS = 10     # Go's http.Server: the TLS handshake is bounded, and per connection


class TlsServer(http.server.ThreadingHTTPServer):
    """HTTPS with each TLS handshake in its connection's own thread, as Go's
    server does it in the connection's goroutine. (Wrapping the listening
    socket did it in accept(): one peer gone silent mid-handshake, a Pi
    powered off at that moment, stopped the server accepting anyone.)"""
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        request.settimeout(HANDSHAKE_SECONDS)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:     # Go's net/http logs it so, and closes
            log(f"http: TLS handshake error from {client_address[0]}:{client_address[1]}: {err}")
            return          # shutdown_request closes it
        connection.settimeout(None)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            # FIN after the answer, then close (socketserver's shutdown_request): a bare
            # close() with unread bytes (a body the handler did not need) sends a reset,
            # which can reach the client before the answer does.
            self.shutdown_request(connection)


class ApiHandler(http.server.BaseHTTPRequestHandler):
    server_state: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):   # the journal gets k3s-style lines only
        pass

    warnings: list[str] = []     # the request's warnings (unknown fields), as Warning: 299 headers

    def send_json(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for warning in self.warnings:
            self.send_header("Warning", "299 - " + json.dumps(warning))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, code: int, text: str, content_type: str = "text/plain") -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    node: str | None = None     # the node whose identity the request carries (None: an admin)

    def authenticated(self) -> bool:
        """An admin (client certificate of system:masters) or a node: its kubelet
        certificate (system:node:NAME), or the bearer token its join returned."""
        self.node = None
        certificate = self.connection.getpeercert()
        if certificate:
            subject = dict(field for entry in certificate.get("subject", ()) for field in entry)
            if subject.get("commonName", "").startswith("system:node:"):
                self.node = subject["commonName"].removeprefix("system:node:")
            return True
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.server_state.agent_tokens:
            self.node = self.server_state.agent_tokens[auth[7:]]
            return True
        return False

    def handle_any(self, method: str) -> None:
        state = self.server_state
        if state.delay:
            time.sleep(state.delay)
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.warnings = []
        try:
            if url.path == "/cacerts":
                return self.send_text(200, (state.tls / "server-ca.crt").read_text())
            if url.path == "/v1-k3s/standin-join":
                return self.join()
            if url.path == "/v1-k3s/client-kubelet.crt" and method == "GET":
                return self.client_kubelet_cert()
            if url.path == "/v1-k3s/token" and method == "PUT":
                return self.rotate()
            if not self.authenticated():
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if url.path == "/v1-k3s/standin-heartbeat" and method == "POST":
                if not self.node:
                    raise ApiError(403, "Forbidden", "forbidden: only a kubelet posts its node's status")
                state.heartbeat(self.node)
                return self.send_json(200, {})
            if url.path == "/v1-k3s/standin-lb-answer" and method == "GET" and self.node:
                # A node's svclb port passes a request on, as klipper-lb does to the Service's cluster IP.
                code, text = traefik.answer(state.store, query["namespace"], query["service"], int(query["port"]),
                                            query.get("host", ""), query.get("path", ""))
                return self.send_json(200, {"code": code, "body": text})
            if url.path in ("/readyz", "/livez", "/healthz"):
                return self.send_text(200, "ok")
            if url.path in ("/version", "/version/"):    # the Python client's VersionApi asks for the latter
                return self.send_json(200, {"major": "1", "minor": "31", "gitVersion": VERSION,
                                            "platform": "linux/amd64"})
            status, body = self.api(method, url.path.strip("/").split("/"), query)
            return self.send_json(status, body)
        except ApiError as err:
            return self.send_json(err.code, err.status())

    do_GET = lambda self: self.handle_any("GET")          # noqa: E731
    do_POST = lambda self: self.handle_any("POST")        # noqa: E731
    do_PUT = lambda self: self.handle_any("PUT")          # noqa: E731
    do_PATCH = lambda self: self.handle_any("PATCH")      # noqa: E731
    do_DELETE = lambda self: self.handle_any("DELETE")    # noqa: E731

    def check_join_token(self, role: str = "k3s:agent") -> None:
        """Basic auth against cred/passwd as the server read it at start
        (k3s's passwordfile authenticator): user node with the agent token, or
        with the server's password when no agent token is set; user server
        with the server token. A wrong password is 401; a user without role
        (the join endpoints want k3s:agent: user server is not let in there,
        and a k3s agent always presents user node) is 403, as k3s's
        auth.HasRole answers."""
        auth = self.headers.get("Authorization", "")
        try:
            user, _, secret = base64.b64decode(auth.removeprefix("Basic "), validate=True).decode().partition(":")
        except ValueError:
            user, secret = "", ""
        password, has = self.server_state.users.get(user, ("", ""))
        if not password or not secrets.compare_digest(secret.encode(), password.encode()):
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if has != role:
            raise ApiError(403, "Forbidden", "forbidden")

    def client_kubelet_cert(self) -> None:
        """k3s's /v1-k3s/client-kubelet.crt: the join token, and the node's name
        and password in k3s's headers, buy that node's kubelet identity."""
        self.check_join_token()
        name = self.headers.get("k3s-Node-Name", "")
        self.server_state.check_node_password(name, self.headers.get("k3s-Node-Password", ""))
        self.send_text(200, self.server_state.kubelet_client_certificate(name), "application/x-pem-file")

    def join(self) -> None:
        """The agent's side of joining: token in basic auth, node name and
        password in k3s's headers (k3s-Node-Name, k3s-Node-Password)."""
        state = self.server_state
        self.check_join_token()
        request = json.loads(self.body() or b"{}")
        name = self.headers.get("k3s-Node-Name", "")
        info = request.get("nodeInfo") or {}     # the kubelet's own; never the server's
        if not isinstance(info, dict) or not set(info) <= set(NODE_INFO_KEYS) \
                or not all(isinstance(v, str) for v in info.values()):
            raise ApiError(400, "BadRequest", f"nodeInfo: the kubelet's own {', '.join(NODE_INFO_KEYS)}")
        state.register(name, self.headers.get("k3s-Node-Password", ""), request.get("labels", {}),
                       request.get("address") or self.client_address[0], "agent", info)
        log(f"node {name} joined")
        bearer = secrets.token_hex(16)
        state.agent_tokens[bearer] = name
        self.send_json(200, {"node": name, "token": bearer})

    def rotate(self) -> None:
        self.check_join_token("k3s:server")
        new = json.loads(self.body() or b"{}").get("newToken") or ""
        self.server_state.rotate_token(token_secret(new) if new else "")
        log("token rotated; restart servers and agents with the new token")
        self.send_json(200, {})

    # /api/v1/..., /apis/GROUP/VERSION/...
    def api(self, method: str, parts: list[str], query: dict):
        if parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["apis"]:
            groups = sorted({g for g, *_ in RESOURCES if g})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
        if parts[0] == "api":
            group, rest = "", parts[1:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, rest = parts[1], parts[2:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({'/'.join(parts)})")
        version, rest = rest[0], rest[1:]
        if not rest:
            return 200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": f"{group}/{version}" if group else version,
                         "resources": [{"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                                        "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update"]}
                                       for g, v, kind, plural, namespaced in RESOURCES
                                       if g == group and v == version]}
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        if len(rest) > 2:
            raise ApiError(404, "NotFound", f"subresource {rest[2]} is not served by the k3s stand-in")
        if (group, version, plural) not in BY_PATH:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural})")
        kind, namespaced = BY_PATH[(group, version, plural)]
        api_version = f"{group}/{version}" if group else version
        return self.resource(method, plural, kind, api_version, namespaced, namespace, name, query)

    def resource(self, method, plural, kind, api_version, namespaced, namespace, name, query):
        store = self.server_state.store
        if self.node:
            self.authorize_node(method, plural, api_version, namespaced, namespace, name)
        if method == "GET" and name is None:
            items = store.list(plural, namespace if namespaced and namespace else None,
                               query.get("labelSelector", ""))
            return 200, {"kind": f"{kind}List", "apiVersion": api_version,
                         "metadata": {"resourceVersion": str(store.version)}, "items": items}
        group, _, version = api_version.rpartition("/")
        request = writes.Request(writes.Resource(group, version, kind, plural, namespaced), namespace, name, query,
                                 self.headers.get("User-Agent", ""),
                                 lambda current, new: self.admit(plural, request.name, current, new))
        self.warnings = request.warnings
        current = store.get(plural, namespace, name) if name else None
        if method in ("GET", "DELETE", "PUT") and not current:
            raise status.not_found(plural, name, group)
        if method == "GET":
            return 200, current
        api = self.server_state.api
        if method == "DELETE":
            return api.delete(request, current)
        content_type = self.headers.get("Content-Type", "").split(";")[0]
        try:
            doc = json.loads(self.body())
        except ValueError:
            raise ApiError(415, "UnsupportedMediaType",
                           "the k3s stand-in reads JSON bodies only (YAML is JSON's superset; send JSON)") from None
        if not isinstance(doc, dict):
            raise status.bad_request(f"the body of a {method} must be an object")
        if method == "POST":
            request.name = (doc.get("metadata") or {}).get("name")
            if store.get(plural, namespace, request.name):
                raise ApiError(409, "AlreadyExists", f'{status.qualified(plural, group)} "{request.name}" already exists',
                               status.details(request.name, group, plural))
            return api.create(request, self.checked(doc, kind, api_version, None))
        if method == "PUT":
            return api.replace(request, current, self.checked(doc, kind, api_version, name))
        if content_type == "application/apply-patch+yaml":
            return api.apply(request, current, self.checked(doc, kind, doc.get("apiVersion"), name))
        if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not current:
                raise status.not_found(plural, name, group)
            return api.merge_patch(request, current, doc)
        raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type!r}")

    # What a node's identity may read (RBAC's system:node role, less watch).
    NODE_READABLE = ("nodes", "pods", "services")
    # Read one by one, and only when a pod bound to the node uses them (the Node authorizer).
    NODE_GRAPH = {"secrets": "secret", "configmaps": "configMap", "persistentvolumeclaims": "persistentVolumeClaim"}

    def authorize_node(self, method, plural, api_version, namespaced, namespace, name) -> None:
        """The Node authorizer and RBAC for a kubelet's identity (system:node:NAME),
        as strict as the real API server for what the stand-in serves."""
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}[method]
        if plural == "nodes" or (plural in self.NODE_READABLE and verb in ("get", "list")):
            return     # writes to Nodes go on to NodeRestriction (admit)
        where = f' in the namespace "{namespace}"' if namespaced and namespace else " at the cluster scope"
        group = api_version.rpartition("/")[0]
        why = f'User "system:node:{self.node}" cannot {verb} resource "{plural}" in API group "{group}"{where}'
        if plural in self.NODE_GRAPH and verb == "get":
            if self.pod_on_node_uses(self.NODE_GRAPH[plural], namespace, name):
                return
            why += f": no relationship found between node '{self.node}' and this object"
        raise ApiError(403, "Forbidden", f'{plural} "{name}" is forbidden: {why}' if name else f"{plural} is forbidden: {why}",
                       {"name": name, "kind": plural} if name else {"kind": plural})

    def pod_on_node_uses(self, what: str, namespace: str, name: str) -> bool:
        for pod in self.server_state.store.list("pods", namespace):
            spec = pod.get("spec") or {}
            if spec.get("nodeName") == self.node and name in pod_references(spec, what):
                return True
        return False

    def admit(self, plural: str, name: str | None, current: dict | None, new: dict | None):
        """NodeRestriction admission for a node's own writes: only its own Node,
        and no node-restriction.kubernetes.io/ (or unknown kubernetes.io) labels
        added, changed or removed. Returns new."""
        if not self.node or plural != "nodes":
            return new
        name = name or (new or {}).get("metadata", {}).get("name", "")
        if name != self.node:
            raise forbidden("nodes", name, f'node "{self.node}" is not allowed to modify node "{name}"')
        if new is None:
            return new
        labels = new.get("metadata", {}).get("labels") or {}
        if current is None:
            claimed = forbidden_node_labels(labels, {})
            if claimed:
                raise forbidden("nodes", name, f'node "{name}" is not allowed to set the following labels: '
                                               + ", ".join(claimed))
            return new
        if (new.get("spec") or {}).get("taints") != (current.get("spec") or {}).get("taints"):
            raise forbidden("nodes", name, f'node "{name}" is not allowed to modify taints')
        claimed = forbidden_node_labels(labels, current.get("metadata", {}).get("labels") or {})
        if claimed:
            raise forbidden("nodes", name, "is not allowed to modify labels: " + ", ".join(claimed))
        return new

    @staticmethod
    def checked(doc: dict, kind: str, api_version: str, name: str | None) -> dict:
        if doc.get("kind") != kind or doc.get("apiVersion") != api_version:
            raise ApiError(400, "BadRequest", f"the body's kind/apiVersion ({doc.get('apiVersion')}/{doc.get('kind')}) "
                                              f"does not match the URL ({api_version}/{kind})")
        meta = doc.get("metadata") or {}
        if not meta.get("name") or (name and meta["name"] != name):
            raise ApiError(400, "BadRequest", "metadata.name: Required value, and must match the URL")
        return copy.deepcopy(doc)


# --- the agent ---------------------------------------------------------------

def run_agent(config: dict) -> None:
    """k3s agent: join with the token once, at start (the kubelet's identity
    and the node's registration), then post the node's status with that
    identity: a running agent needs no token again, as with k3s."""
    server = str(config.get("server") or "")
    if not server:
        fatal("--server is required for the agent")
    token = read_token(config)
    if not token:
        fatal("--token is required")
    name = str(config.get("node-name") or socket.gethostname())
    labels = labels_from(config)
    check_kubelet_labels(labels)
    identity = Path(str(config.get("data-dir") or "/var/lib/rancher/k3s")) / "agent"
    join_cluster(server, token, {"name": name, "labels": labels, "address": str(config.get("node-ip", ""))},
                 node_password(), identity)
    log(f"k3s stand-in {VERSION} agent: node {name} joined {server}")
    kubelet = ssl.create_default_context(cafile=identity / "server-ca.crt")
    kubelet.check_hostname = False
    kubelet.load_cert_chain(identity / "client-kubelet.crt", identity / "client-kubelet.key")

    def post() -> None:
        request = urllib.request.Request(f"{server}/v1-k3s/standin-heartbeat", method="POST", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=kubelet, timeout=10):
            pass

    threading.Thread(target=hostports.follow, daemon=True, args=(
        name, lambda: kubelet_get(server, kubelet, "/api/v1/namespaces/kube-system/pods?labelSelector="
                                  + urllib.parse.quote(servicelb.SVC_NAME))["items"],
        lambda *request: lb_answer(server, kubelet, *request), log)).start()
    if kubelet_delay() == 0:
        try:
            post()
        except (urllib.error.URLError, OSError) as err:
            log(f"Error updating node status, will retry: {err}")
    sd_notify("READY=1")
    post_status(post)
    while True:          # a kubelet that never posts: the agent runs on
        time.sleep(3600)


def kubelet_get(server: str, kubelet: ssl.SSLContext, path: str) -> dict:
    with urllib.request.urlopen(f"{server}{path}", context=kubelet, timeout=10) as response:
        return json.loads(response.read())


def lb_answer(server: str, kubelet: ssl.SSLContext, namespace: str, service: str, port: int, host: str,
              path: str) -> tuple[int, str]:
    query = urllib.parse.urlencode({"namespace": namespace, "service": service, "port": port, "host": host,
                                    "path": path})
    found = kubelet_get(server, kubelet, f"/v1-k3s/standin-lb-answer?{query}")
    return found["code"], found["body"]


PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n?", re.S)


# clientaccess token.go validateCAHash, for a token without CA hash and a CA
# the host does not trust: the agent goes on, trusting what /cacerts served.
BARE_TOKEN_WARNING = ("Cluster CA certificate is not trusted by the host CA bundle, but the token does not include "
                      "a CA hash. Use the full token from the server's node-token file to enable Cluster CA "
                      "validation.")


def join_cluster(server: str, token: str, node: dict, password: str, identity: Path) -> None:
    """Until the server takes the node: its CA (pinned when the token has the
    CA's hash), the kubelet's client certificate (identity/client-kubelet.crt
    and .key, as k3s keeps them), the node registered. The token goes as user
    node, whatever user it names (k3s: clientaccess.WithUser("node"))."""
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    while True:
        try:
            with urllib.request.urlopen(f"{server}/cacerts", context=unverified, timeout=10) as response:
                ca = response.read()
            want = parse_token(token)[0]
            if want and ca_hash(ca) != want:
                fatal(f"token CA hash does not match the Cluster CA certificate hash: {server}/cacerts")
            if not want:
                warn(BARE_TOKEN_WARNING)
            pinned = ssl.create_default_context(cadata=ca.decode())
            pinned.check_hostname = False
            headers = {"Authorization": "Basic " + base64.b64encode(f"node:{token_secret(token)}".encode()).decode(),
                       "k3s-Node-Name": node["name"], "k3s-Node-Password": password}
            with urllib.request.urlopen(urllib.request.Request(f"{server}/v1-k3s/client-kubelet.crt",
                                                               headers=headers), context=pinned, timeout=30) as answer:
                pem = answer.read().decode()
            key = PRIVATE_KEY.search(pem).group(0)
            write_private(identity / "client-kubelet.key", key)
            write_private(identity / "client-kubelet.crt", pem.replace(key, ""), 0o644)
            write_private(identity / "server-ca.crt", ca.decode(), 0o644)
            request = urllib.request.Request(
                f"{server}/v1-k3s/standin-join", method="POST", headers={**headers, "Content-Type": "application/json"},
                data=json.dumps({"labels": node["labels"], "address": node["address"],
                                 "nodeInfo": node_info()}).encode())
            with urllib.request.urlopen(request, context=pinned, timeout=10):
                return
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read() or b"{}").get("message", err.reason)
            except ValueError:
                message = err.reason
            log(f"Waiting to retrieve agent configuration; server is not ready: {err.code} {message}")
            time.sleep(5)
        except (urllib.error.URLError, OSError) as err:
            log(f"Waiting to retrieve agent configuration; server is not ready: {getattr(err, 'reason', err)}")
            time.sleep(2)


def rotate_token(argv: list[str]) -> int:
    options = {"server": "https://127.0.0.1:6443", "token": os.environ.get("K3S_TOKEN", "")}
    args = iter(argv)
    for arg in args:
        key, _, value = arg.removeprefix("--").partition("=")
        options[key] = value or next(args)
    if not options["token"] or not options.get("new-token"):
        fatal("--token and --new-token are required")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(
        f"{options['server']}/v1-k3s/token", method="PUT",
        data=json.dumps({"newToken": options["new-token"]}).encode(),
        headers={"Authorization": "Basic " + base64.b64encode(
            f"server:{token_secret(options['token'])}".encode()).decode(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30):
            pass
    except urllib.error.HTTPError as err:
        fatal(f"token rotation failed: {err.code} {err.reason}")
    print("Token rotated, restart k3s nodes with new token")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("--version", "-v", "version"):
        print(f"k3s version {VERSION} (rackboot test stand-in)\ngo version go1.22.9")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    command, rest = argv[0], argv[1:]
    if command == "server":
        Server(load_config(rest, "server")).start()
    elif command == "agent":
        run_agent(load_config(rest, "agent"))
    elif command == "token" and rest[:1] == ["rotate"]:
        return rotate_token(rest[1:])
    else:
        print(f"k3s stand-in: command {command!r} is not implemented (server, agent, --version are)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
