"""Apply: put the rack's Kubernetes YAML and Secrets into its cluster (on the
jumphost, through k3s's admin kubeconfig).

- First, the jumphost's Node gets the label JUMPHOST_LABEL through the API.
  Pods that mount the rack's Secrets select that label (nodeSelector), not
  one a node chooses itself: a kubelet may set any label outside the
  kubernetes.io namespaces on its own Node (k3s's node-label), so anything
  holding the agent token could claim e.g. skolo.dev/role=jumphost and have
  those pods, and their Secrets, sent to it. Labels under node-restriction.
  kubernetes.io/ are refused to kubelets at start (--node-labels) and by the
  NodeRestriction admission plugin (on in k3s): only this agent sets them.
- Every document of the profile's manifests, in order, by server-side apply
  with one field manager ("rackboot"), forced: the profile is the truth. A
  Namespace still being deleted (pruned by an earlier run, say) is waited
  for until it is gone, then made afresh.
- The profile's Secrets and those of its secret_imports (secret_import.py), read
  into memory and sent straight to the API; nothing is written to disk. Before
  the first workload, image_pull_secrets go on default ServiceAccounts.
- Everything applied carries two labels; objects with those labels that the
  profile no longer contains are deleted (pruned). Objects without them are
  never touched, whoever made them; objects already being deleted are done.
- Then wait, with a timeout, until the Deployments, StatefulSets and
  DaemonSets applied are rolled out as `kubectl rollout status` means it
  (firstboot/rollout.py): their new pods, not the old ones, ready.

A document that is not a Kubernetes object, or that the API refuses (a 4xx,
or server-side apply's 500 for an unknown field or a wrong type), is bad
input: the step fails naming the file, the document's position (1 = first),
the object and the API's message, and is not retried.
"""

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from firstboot import rollout, secret_import, secrets, service_accounts
from firstboot.errors import BadInput, RackbootError

FIELD_MANAGER = "rackboot"
JUMPHOST_LABEL = "node-restriction.kubernetes.io/rackboot-role"
MANAGED_BY = "app.kubernetes.io/managed-by"
RACK_LABEL = "rackboot.dev/rack"
TIMEOUT = float(os.environ.get("RACKBOOT_APPLY_TIMEOUT", "300"))
REQUEST_TIMEOUT = 60
MAKE_PODS = (*rollout.WORKLOADS, "ReplicaSet", "Job", "CronJob", "Pod")


@dataclass(frozen=True)
class Document:
    source: str          # file, or "secrets" for the profile's Secrets
    index: int           # position in the file, from 1
    body: dict

    @property
    def key(self) -> tuple[str, str, str, str]:
        meta = self.body["metadata"]
        return self.body["apiVersion"], self.body["kind"], meta.get("namespace") or "", meta["name"]

    def __str__(self) -> str:
        api_version, kind, namespace, name = self.key
        return f"{self.source}: document {self.index} ({kind} {namespace + '/' if namespace else ''}{name})"


def load_documents(manifests: tuple[Path, ...]) -> list[Document]:
    documents = []
    for path in manifests:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as err:
            raise BadInput(f"{path}: not valid YAML: {err}") from None
        except OSError as err:
            raise BadInput(f"{path}: {err.strerror}") from None
        for index, body in enumerate(loaded, start=1):
            if body is None:       # an empty document between two '---'
                continue
            problem = None
            if not isinstance(body, dict):
                problem = "is not a mapping"
            elif not all(isinstance(body.get(k), str) and body[k] for k in ("apiVersion", "kind")):
                problem = "has no apiVersion or kind"
            elif not isinstance(body.get("metadata"), dict) or not isinstance(body["metadata"].get("name"), str):
                problem = "has no metadata.name"
            if problem:
                raise BadInput(f"{path}: document {index} {problem}; each document must be one "
                               "Kubernetes object", hint="fix the manifest and rebuild the image")
            documents.append(Document(str(path), index, body))
    return documents


def secret_documents(profile) -> list[Document]:
    documents = []
    for index, spec in enumerate(profile.secrets, start=1):
        data = {key: base64.b64encode(secrets.access(ref)).decode() for key, ref in spec.data}
        documents.append(Document("secrets", index, {
            "apiVersion": "v1", "kind": "Secret", "type": spec.type,
            "metadata": {"name": spec.name, "namespace": spec.namespace}, "data": data}))
    return documents


def imported_documents(profile) -> list[Document]:
    """The Secrets of the profile's secret_imports, every one read and checked before anything is applied."""
    return [Document(f"secret_imports[{number}] {spec.source}", index, body)
            for number, spec in enumerate(profile.secret_imports)
            for index, body in enumerate(secret_import.imported_secrets(spec), start=1)]


def _refuse_duplicates(documents: list[Document]) -> None:
    """One object made twice (a manifest's Secret and an imported one, say): the last would silently win."""
    first = {}
    for document in documents:
        if first.setdefault(document.key, document) is not document:
            raise BadInput(f"{document} is also {first[document.key]}", hint="keep one of the two")


def _labelled(body: dict, rack: str) -> dict:
    meta = dict(body["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY: FIELD_MANAGER, RACK_LABEL: rack}
    return {**body, "metadata": meta}


def _client(kubeconfig: Path):
    from kubernetes import config
    from kubernetes.dynamic import DynamicClient

    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
    except (config.ConfigException, OSError) as err:
        raise RackbootError(f"{kubeconfig}: cannot use k3s's kubeconfig: {err}",
                            hint="is k3s running? journalctl -u k3s") from None
    return DynamicClient(api)


# Server-side apply turns the object into its schema's types before any
# validation; an unknown field or a wrong type fails there and comes back as a
# plain 500 with this message (kubernetes#122480). The object's fault, not the
# server's: trying again gets the same answer.
REFUSED_AS_500 = ("failed to create typed patch object",)


def _status_body(err) -> dict:
    try:
        body = json.loads(err.body)
    except (TypeError, ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}


def _api_error(what, err) -> RackbootError:
    """Refusals (4xx, and apply's 500s above) are the document's fault: bad
    input. A create in a namespace being deleted, and anything else, may pass."""
    body = _status_body(err)
    message = body.get("message") or getattr(err, "reason", None) or str(err)
    status = getattr(err, "status", None)
    text = f"{what}: the API refused it ({status}): {message}"
    causes = (body.get("details") or {}).get("causes") or ()
    if status == 403 and any(cause.get("reason") == "NamespaceTerminating" for cause in causes):
        return RackbootError(text, hint="its namespace is being deleted (Terminating) and not in the profile, "
                                        "or deleted by someone else; the agent tries again at its next run")
    if status in (400, 403, 404, 409, 415, 422) or status == 500 and message.startswith(REFUSED_AS_500):
        return BadInput(text, hint="fix the document and rebuild the image; objects before it were applied")
    return RackbootError(text, hint="the agent tries again at its next run")


def _resource(dyn, document: Document):
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    api_version, kind, _, _ = document.key
    try:
        return dyn.resources.get(api_version=api_version, kind=kind)
    except ResourceNotFoundError:
        raise BadInput(f"{document}: the cluster serves no {kind} in {api_version}",
                       hint="check apiVersion and kind; custom resources need their CRD first") from None


def _apply_document(dyn, document: Document, rack: str, timeout: float) -> tuple[str, str, str, str]:
    """Server-side apply of one document; its (apiVersion, kind, namespace, name)."""
    from kubernetes.client.exceptions import ApiException

    resource = _resource(dyn, document)
    body = _labelled(document.body, rack)
    name, namespace = body["metadata"]["name"], None
    if resource.namespaced:
        namespace = body["metadata"].get("namespace") or "default"
        body["metadata"]["namespace"] = namespace
    try:
        if document.body["kind"] == "Namespace" and resource.group == "":
            rollout.wait_until_namespace_gone(dyn, resource, name, timeout, REQUEST_TIMEOUT)
        dyn.server_side_apply(resource, body=body, name=name, namespace=namespace,
                              field_manager=FIELD_MANAGER, force_conflicts=True, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        raise _api_error(document, err) from None
    return document.body["apiVersion"], document.body["kind"], namespace or "", name


def apply(kubeconfig: Path, profile, previous_inventory=(), timeout: float = TIMEOUT) -> dict:
    """kubeconfig: k3s's admin kubeconfig (Layout.kubeconfig)."""
    from urllib3.exceptions import HTTPError

    documents = load_documents(profile.manifests)
    documents += secret_documents(profile) + imported_documents(profile)
    _refuse_duplicates(documents)
    applied = []
    try:
        dyn = _client(kubeconfig)     # which reads the API's version and kinds: it may not answer
        placement = label_jumphost(dyn, profile.jumphost.hostname)
        first_maker = next((i for i, d in enumerate(documents) if d.body["kind"] in MAKE_PODS), len(documents))
        for index, document in enumerate(documents + [None]):
            if index == first_maker:     # pods take their ServiceAccount's pull secrets when made, not later
                pull_secrets = service_accounts.attach_pull_secrets(dyn, profile.image_pull_secrets, timeout,
                                                                    REQUEST_TIMEOUT)
            if document:
                applied.append(_apply_document(dyn, document, profile.rack, timeout))
        inventory = sorted({(a, k) for a, k, _, _ in applied} | {tuple(kind) for kind in previous_inventory})
        pruned = _prune(dyn, profile.rack, inventory, set(applied))
        waited = rollout.wait_for_workloads(dyn, [a for a in applied if a[1] in rollout.WORKLOADS], timeout,
                                            REQUEST_TIMEOUT)
    except (HTTPError, OSError) as err:
        raise RackbootError(f"the k3s API is not reachable ({type(err).__name__}: {err})",
                            hint="journalctl -u k3s; the agent tries again at its next run") from None
    return {"applied": [f"{k} {ns + '/' if ns else ''}{n}" for _, k, ns, n in applied],
            "secrets": [f"{d.body['metadata']['namespace']}/{d.body['metadata']['name']}"
                        for d in documents if d.source == "secrets"],
            "imported": [f"{d.body['metadata']['namespace']}/{d.body['metadata']['name']}"
                         for d in documents if d.source.startswith("secret_imports")],
            "pull_secrets": pull_secrets,
            "pruned": pruned, "inventory": [list(kind) for kind in inventory], "waited_seconds": waited,
            "placement": placement}


def label_jumphost(dyn, node: str) -> dict:
    """Put JUMPHOST_LABEL=jumphost on the jumphost's Node (a JSON merge patch
    of that one label, field manager rackboot: the Node's other labels and
    status stay the kubelet's)."""
    from kubernetes.client.exceptions import ApiException

    nodes = dyn.resources.get(api_version="v1", kind="Node")
    label = f"{JUMPHOST_LABEL}=jumphost"
    try:
        current = dyn.get(nodes, name=node, _request_timeout=REQUEST_TIMEOUT)
        if (current.metadata.labels or {}).get(JUMPHOST_LABEL) == "jumphost":
            return {"node": node, "label": label, "changed": False}
        dyn.patch(nodes, name=node, body={"metadata": {"labels": {JUMPHOST_LABEL: "jumphost"}}},
                  content_type="application/merge-patch+json", field_manager=FIELD_MANAGER,
                  _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        raise RackbootError(f"labelling the jumphost's Node {node} ({label}): the API answered {err.status} {err.reason}",
                            hint="kubectl get node on the jumphost; the agent tries again at its next run") from None
    return {"node": node, "label": label, "changed": True}


def prunable(dyn, rack: str, inventory, keep: set) -> list[tuple]:
    """(resource, key) of the rack's objects this agent made that keep does not list, Namespaces last."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError
    selector = f"{MANAGED_BY}={FIELD_MANAGER},{RACK_LABEL}={rack}"
    doomed = []
    for api_version, kind in inventory:
        try:
            resource = dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            continue
        for item in dyn.get(resource, label_selector=selector, _request_timeout=REQUEST_TIMEOUT).items:
            key = (api_version, kind, item.metadata.namespace or "", item.metadata.name)
            # One being deleted (a Namespace pruned earlier, still Terminating) is pruned: a delete gets 409.
            if key not in keep and not item.metadata.deletionTimestamp:
                doomed.append((resource, key))
    doomed.sort(key=lambda entry: entry[1][1] == "Namespace")   # deleting one deletes what is in it
    return doomed


def _prune(dyn, rack: str, inventory, keep: set) -> list[str]:
    from kubernetes.client.exceptions import ApiException
    pruned = []
    for resource, (_, kind, namespace, name) in prunable(dyn, rack, inventory, keep):
        try:
            dyn.delete(resource, name=name, namespace=namespace or None, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as err:
            if not _already_going(dyn, resource, namespace, name, err):
                raise _api_error(f"pruning {kind} {namespace}/{name}", err) from None
        pruned.append(f"{kind} {namespace + '/' if namespace else ''}{name}")
    return pruned


def _already_going(dyn, resource, namespace: str, name: str, err) -> bool:
    """A delete answered 404 (gone), or 409 for an object whose deletion has begun since it
    was listed (a Namespace: 'The system is ensuring all content is removed'), is a prune done."""
    from kubernetes.client.exceptions import ApiException

    if err.status == 404:
        return True
    if err.status != 409:
        return False
    try:
        current = dyn.get(resource, name=name, namespace=namespace or None, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as again:
        return again.status == 404
    return bool(current.metadata.deletionTimestamp)
