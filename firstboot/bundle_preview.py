"""What installing a bundle would change, changing nothing (push --dry-run):

- files: the bundle's paths added, removed or changed against the one in use
  (from their BUNDLE.json entries);
- objects: the new bundle's manifests applied as the agent's apply step
  applies them (same labels, field manager, forced), but with dryRun=All: the
  API server runs admission, defaulting and validation and answers with the
  object as it would be, and stores nothing. Each is compared with the
  object as it is (a unified diff of its YAML, without the fields the server
  keeps for itself); objects the agent would prune are listed. The profile's
  Secrets are named only: their values are never read for a preview.
"""

import difflib

import yaml

from firstboot import apply, bundle, files, rack_model, state
from firstboot.errors import RackbootError
from firstboot.layout import RACK_MODEL, Layout

SERVER_FIELDS = ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink")


def file_changes(current: bundle.Bundle | None, new: bundle.Bundle) -> list[str]:
    before = {e[0]: e for e in (current.entries if current else ())}
    after = {e[0]: e for e in new.entries}
    lines = []
    for path in sorted(before.keys() | after.keys()):
        if path not in before:
            lines.append(f"  + {path}")
        elif path not in after:
            lines.append(f"  - {path}")
        elif before[path] != after[path]:
            lines.append(f"  ~ {path}")
    return [f"files ({len(lines)} changed):"] + lines


def _model(layout: Layout, new: bundle.Bundle):
    path = new.directory / RACK_MODEL
    text = files.read_regular(path, rack_model.MAX_BYTES).decode()
    own = new.directory / bundle.PROFILES
    return rack_model.loads(text, own if own.is_dir() else layout.profiles, path)


def _shown(obj: dict | None) -> list[str]:
    if obj is None:
        return []
    obj = {k: v for k, v in obj.items() if k != "status"}
    obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    return yaml.safe_dump(obj, sort_keys=True).splitlines()


def _one(dyn, document, rack: str) -> tuple[tuple, list[str]]:
    from kubernetes.client.exceptions import ApiException

    resource = apply._resource(dyn, document)
    body = apply._labelled(document.body, rack)
    name, namespace = body["metadata"]["name"], None
    if resource.namespaced:
        namespace = body["metadata"].get("namespace") or "default"
        body["metadata"]["namespace"] = namespace
    key = (document.body["apiVersion"], document.body["kind"], namespace or "", name)
    try:
        try:
            before = dyn.get(resource, name=name, namespace=namespace, _request_timeout=apply.REQUEST_TIMEOUT).to_dict()
        except ApiException as err:
            if err.status != 404:
                raise
            before = None
        after = dyn.server_side_apply(resource, body=body, name=name, namespace=namespace, dry_run="All",
                                      field_manager=apply.FIELD_MANAGER, force_conflicts=True,
                                      _request_timeout=apply.REQUEST_TIMEOUT).to_dict()
    except ApiException as err:
        raise apply._api_error(document, err) from None
    label = f"{key[1]} {namespace + '/' if namespace else ''}{name}"
    diff = list(difflib.unified_diff(_shown(before), _shown(after), "in use", "pushed", lineterm="", n=2))
    if before is None:
        return key, [f"  + {label} (created)"] + [f"      {line}" for line in diff[2:]]
    if not diff:
        return key, [f"  = {label}"]
    return key, [f"  ~ {label}"] + [f"      {line}" for line in diff]


def _doomed(dyn, rack: str, inventory, keep: set) -> list[str]:
    return sorted(f"  - {kind} {namespace + '/' if namespace else ''}{name} (pruned)"
                  for _, (_, kind, namespace, name) in apply.prunable(dyn, rack, inventory, keep))


def object_changes(layout: Layout, new: bundle.Bundle, rack: str) -> list[str]:
    from urllib3.exceptions import HTTPError

    profile = _model(layout, new)
    documents = apply.load_documents(profile.manifests)
    previous = {tuple(kind) for kind in state.load(layout).get("inventory", ())}
    lines, keys = [], set()
    try:
        dyn = apply._client(layout.kubeconfig)
        for document in documents:
            key, shown = _one(dyn, document, rack)
            keys.add(key)
            lines += shown
        inventory = sorted({(a, k) for a, k, _, _ in keys} | previous)
        lines += _doomed(dyn, rack, inventory, keys)
    except (HTTPError, OSError) as err:
        raise RackbootError(f"the k3s API is not reachable for the dry run ({type(err).__name__}: {err})",
                            hint="is k3s running? journalctl -u k3s") from None
    lines += [f"  ? Secret {s.namespace}/{s.name} (applied with its references' values; not read for a dry run)"
              for s in profile.secrets]
    return ["objects (server-side dry run):"] + lines


def preview(layout: Layout, current: bundle.Bundle | None, new: bundle.Bundle, rack: str) -> list[str]:
    return file_changes(current, new) + object_changes(layout, new, rack)
