"""Import every secret under a prefix (a profile's secret_imports) as
Kubernetes Secrets, as the original team's apply-all-secrets-to-cluster.sh
did: list the prefix (`berglas list`, firstboot/secret_listing.py), read each
secret, base64-decode the Secret YAML it holds (get-secret.sh), and make that
Secret with its stored type and data.

Its name is its stored name, the object's name after the prefix, and the
YAML's metadata.name must be the same. The team's scripts make them equal
(`kubectl create secret generic NAME | add-secret-from-stdin.sh CLUSTER NAME`,
`kubectl get secret NAME -o yaml | add-secret-from-stdin.sh CLUSTER NAME`);
where they differ, `berglas list` (what an operator looks at) would not say
which Secrets the rack gets, and two objects could fill one Secret, the last
silently winning. So a mismatch is refused, as is a YAML for another
namespace, one that is not a v1 Secret, does not decode, or that the API
server would refuse for its type (apiserver's ValidateSecret). All of it is
checked for every secret under every prefix before anything is applied. Of
the stored metadata only name and namespace are read: uid, resourceVersion
and the like (`kubectl get -o yaml` keeps them) are the old cluster's.

Errors name the reference, the stored name and the key, never a value.
"""

import base64
import binascii
import json
import re

import yaml

from firstboot import secret_listing, secrets
from firstboot.errors import BadInput

# A Secret's name (DNS-1123 subdomain) and its data keys (IsConfigMapKey).
SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
SECRET_TYPE = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                         r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
MAX_NAME = 253
MAX_SECRET_BYTES = 1024 * 1024
HOW_TO_STORE = ("store a Secret YAML as the team's scripts do: kubectl create secret ... --dry-run=client "
                "-o yaml | kube/secrets/add-secret-from-stdin.sh CLUSTER NAME")


def _refused(ref, stored_name: str, why: str) -> BadInput:
    return BadInput(f"{ref} (Secret {stored_name}): {why}", hint=HOW_TO_STORE)


def _document(value: bytes, ref, stored_name: str) -> dict:
    """The stored Secret YAML as a mapping; a YAML error is named by its line
    only (its text would show the value)."""
    try:
        document = yaml.safe_load(secrets.secret_yaml(value))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise _refused(ref, stored_name, f"the stored value does not decode to YAML{where}, "
                                         "plain or base64-encoded") from None
    if not isinstance(document, dict):
        raise _refused(ref, stored_name, "the stored value is not a Kubernetes object (a YAML mapping)")
    return document


def _check_identity(document: dict, ref, stored_name: str, namespace: str) -> dict:
    """The YAML's metadata, once it is a v1 Secret named stored_name for namespace."""
    kind, api_version = document.get("kind"), document.get("apiVersion")
    if (api_version, kind) != ("v1", "Secret"):
        raise _refused(ref, stored_name, f"the stored object is {kind!r} in {api_version!r}, not a v1 Secret")
    meta = document.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("name") != stored_name:
        raise _refused(ref, stored_name, f"its Secret YAML names the Secret {meta.get('name')!r}, but it is "
                                         f"stored as {stored_name!r}; the stored name must be the Secret's name")
    if meta.get("namespace") not in (None, namespace):
        raise _refused(ref, stored_name, f"its Secret YAML is for namespace {meta['namespace']!r}, but the "
                                         f"profile imports it into {namespace!r}")
    return meta


def _data(document: dict, ref, stored_name: str) -> dict[str, bytes]:
    """data (base64) and stringData (text, which wins, as the API server merges them), as bytes."""
    values = {}
    for field in ("data", "stringData"):
        entries = document.get(field) or {}
        if not isinstance(entries, dict):
            raise _refused(ref, stored_name, f"{field} is not a mapping")
        for key, value in entries.items():
            if not isinstance(key, str) or not DATA_KEY.fullmatch(key) or len(key) > MAX_NAME:
                raise _refused(ref, stored_name, f"{field} key {key!r} is not a Secret key "
                                                 "(letters, digits, '-', '_' and '.')")
            if not isinstance(value, str | None):
                raise _refused(ref, stored_name, f"{field}.{key} is not a string")
            try:
                values[key] = (value or "").encode() if field == "stringData" else \
                    base64.b64decode(value or "", validate=True)
            except (binascii.Error, ValueError):
                raise _refused(ref, stored_name, f"data.{key} is not base64") from None
    if sum(map(len, values.values())) > MAX_SECRET_BYTES:
        raise _refused(ref, stored_name, "its data are more than 1 MiB, which no Secret may hold")
    return values


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def type_problem(secret_type: str, data: dict[str, bytes]) -> str | None:
    """What the API server refuses of a Secret of this type (pkg/apis/core/validation ValidateSecret)."""
    docker_key = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}
    if secret_type in docker_key:
        key = docker_key[secret_type]
        if key not in data:
            return f"a {secret_type} Secret needs data.{key}"
        if not _is_json_object(data[key]):
            return f"data.{key} is not a JSON object, as a {secret_type} Secret's must be"
    if secret_type == "kubernetes.io/basic-auth" and not {"username", "password"} & set(data):
        return "a kubernetes.io/basic-auth Secret needs data.username or data.password"
    if secret_type == "kubernetes.io/ssh-auth" and not data.get("ssh-privatekey"):
        return "a kubernetes.io/ssh-auth Secret needs data.ssh-privatekey"
    if secret_type == "kubernetes.io/tls" and not {"tls.crt", "tls.key"} <= set(data):
        return "a kubernetes.io/tls Secret needs data.tls.crt and data.tls.key"
    if secret_type == "kubernetes.io/service-account-token":
        return "service account tokens are made by the cluster that trusts them; they are not imported"
    return None


def secret_body(value: bytes, ref, stored_name: str, namespace: str) -> dict:
    """The Secret to apply from one stored value; BadInput if it cannot be one."""
    document = _document(value, ref, stored_name)
    _check_identity(document, ref, stored_name, namespace)
    secret_type = document.get("type") or "Opaque"
    if not isinstance(secret_type, str) or not SECRET_TYPE.fullmatch(secret_type):
        raise _refused(ref, stored_name, f"type {secret_type!r} is not a Secret type")
    data = _data(document, ref, stored_name)
    problem = type_problem(secret_type, data)
    if problem:
        raise _refused(ref, stored_name, problem)
    return {"apiVersion": "v1", "kind": "Secret", "type": secret_type,
            "metadata": {"name": stored_name, "namespace": namespace},
            "data": {key: base64.b64encode(raw).decode() for key, raw in sorted(data.items())}}


def imported_secrets(spec, access=secrets.access, list_prefix=secret_listing.list_prefix) -> list[dict]:
    """The Secrets one secret_imports entry makes (a profile.model.SecretImport), in stored-name order."""
    listing = list_prefix(spec.source)
    chosen = [listed for listed in listing.secrets if listed.stored_name not in spec.exclude]
    names = [listed.stored_name for listed in chosen]
    missing = sorted(set(spec.required) - set(names))
    if missing:
        raise BadInput(f"{spec.source}: holds no secret {', '.join(missing)}, which the profile requires "
                       f"(it holds: {', '.join(names) or 'none'})",
                       hint="store it there (kube/secrets/add-secret-from-stdin.sh), or correct the profile")
    bodies = []
    for listed in chosen:
        if not SECRET_NAME.fullmatch(listed.stored_name) or len(listed.stored_name) > MAX_NAME:
            raise BadInput(f"{listed.ref}: its name under {spec.source} ({listed.stored_name!r}) is not a "
                           "Kubernetes Secret name (lower case letters, digits, '-' and '.'; no '/')",
                           hint="move it out of the prefix, or store it under its Secret's name")
        bodies.append(secret_body(access(listed.ref), listed.ref, listed.stored_name, spec.namespace))
    return bodies
