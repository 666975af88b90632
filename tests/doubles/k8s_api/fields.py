"""Server-side apply's field ownership, as structured-merge-diff keeps it in
metadata.managedFields (FieldsV1), at leaf granularity:

- a field is a path of f:NAME (struct fields, map keys), k:{KEYS} (an item of
  a list-type=map list: containers by name, ports by port and protocol) and
  v:VALUE (an item of a list-type=set list); lists without keys and
  x-kubernetes-map-type=atomic maps (a label selector, a Service's selector)
  are owned whole, as one leaf;
- an apply owns the leaves it sends; a leaf that another manager owns with a
  different value is a conflict (409, unless forced: then the applier takes
  it over); a leaf the applier owned and no longer sends is removed from the
  object unless another manager owns it too;
- an update (create, replace, patch) gives its manager the leaves it changed
  and takes them from every other manager.
apiVersion, kind, status and the API server's own metadata are nobody's.
"""

import json

from . import status
from .schema import Schemas, item_key, list_keys

NOT_OWNED_META = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                            "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"})


def leaves(schemas: Schemas, schema: dict, obj: dict) -> dict:
    """{path: value} for every owned leaf of a top-level object (paths are tuples of (tag, name))."""
    out = {}
    schema, _ = schemas.resolve(schema)
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        sub = schema.get("properties", {}).get(key, {})
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in NOT_OWNED_META}
            if not value:
                continue
        _leaves(schemas, sub, value, (("f", key),), out)
    return out


def _leaves(schemas, schema, value, path, out) -> None:
    schema, _ = schemas.resolve(schema)
    if isinstance(value, dict) and value and schema.get("x-kubernetes-map-type") != "atomic" \
            and ("properties" in schema or isinstance(schema.get("additionalProperties"), dict)):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key) or schema.get("additionalProperties") or {}
            _leaves(schemas, sub if isinstance(sub, dict) else {}, item, path + (("f", key),), out)
        return
    keys = list_keys(schemas, schema) if isinstance(value, list) else None
    if keys and all(isinstance(item, dict) for item in value):
        for item in value:
            key = json.dumps(item_key(keys, item), separators=(",", ":"))
            _leaves(schemas, schema.get("items", {}), item, path + (("k", key),), out)
        return
    if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "set":
        for item in value:
            out[path + (("v", json.dumps(item, separators=(",", ":"))),)] = item
        return
    out[path] = value


def rebuild(paths: dict) -> dict:
    """The object holding exactly these leaves, in their order."""
    obj = {}
    for path, value in paths.items():
        _place(obj, path, value)
    return obj


def _place(node, path, value) -> None:
    for index, (tag, name) in enumerate(path):
        last = index == len(path) - 1
        if tag == "f":
            if last:
                if value == {} and isinstance(node.get(name), dict):
                    return      # an owned empty map: others' keys in it stay
                node[name] = value
                return
            nxt_tag = path[index + 1][0]
            node = node.setdefault(name, [] if nxt_tag in ("k", "v") else {})
        elif tag == "k":
            key = json.loads(name)
            item = next((i for i in node if item_key(list(key), i) == key), None)
            if item is None:
                item = dict(key)      # an item holds its keys, whichever of its leaves comes first
                node.append(item)
            node = item
        else:
            if value not in node:
                node.append(value)
            return


# --- managedFields -----------------------------------------------------------

def to_fields_v1(paths) -> dict:
    tree, members = {}, set(paths)
    for path in paths:
        node = tree
        for tag, name in path:
            node = node.setdefault(f"{tag}:{name}", {})
    _mark_members(tree, (), members)
    return tree


def _mark_members(node, path, members) -> None:
    for label, child in node.items():
        if label == ".":
            continue
        sub = path + (tuple(label.split(":", 1)),)
        if child and sub in members:
            child["."] = {}
        _mark_members(child, sub, members)


def from_fields_v1(tree: dict, path=()) -> set:
    out = set()
    for label, child in tree.items():
        if label == ".":
            out.add(path)
            continue
        sub = path + (tuple(label.split(":", 1)),)
        if not child:
            out.add(sub)
        out |= from_fields_v1(child, sub)
    return out


def owners(obj: dict | None) -> list[dict]:
    """[{manager, operation, apiVersion, time, fields: set}] from an object's managedFields."""
    entries = []
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        entries.append({**{k: v for k, v in entry.items() if k not in ("fieldsV1", "fieldsType")},
                        "fields": from_fields_v1(entry.get("fieldsV1") or {})})
    return entries


def managed_fields(entries: list[dict]) -> list[dict]:
    return [{**{k: v for k, v in e.items() if k != "fields"}, "fieldsType": "FieldsV1",
             "fieldsV1": to_fields_v1(sorted(e["fields"]))} for e in entries if e["fields"]]


def path_text(path) -> str:
    """A field path as structured-merge-diff prints it: .spec.containers[name="web"].image"""
    text = ""
    for tag, name in path:
        if tag == "f":
            text += f".{name}"
        elif tag == "k":
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(name).items()) + "]"
        else:
            text += f"[={name}]"
    return text


def _entry(entries, manager, operation, api_version, now) -> dict:
    for entry in entries:
        if entry["manager"] == manager and entry["operation"] == operation and entry.get("apiVersion") == api_version:
            return entry
    entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now, "fields": set()}
    entries.append(entry)
    return entry


def apply(live_leaves: dict, applied: dict, entries: list[dict], manager: str, api_version: str,
          force: bool, now: str) -> dict:
    """The leaves of the object after manager applies `applied`; entries updated in place.
    Raises the API server's 409 on conflicts unless forced."""
    mine = _entry(entries, manager, "Apply", api_version, now)
    others = [e for e in entries if e is not mine]
    conflicts = [(e, path) for path, value in applied.items()
                 if path in live_leaves and live_leaves[path] != value
                 for e in others if path in e["fields"]]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for entry, path in conflicts:
        entry["fields"].discard(path)
    still_owned = set().union(*(e["fields"] for e in others)) if others else set()
    dropped = {p for p in mine["fields"] if p not in applied and p not in still_owned}
    result = {p: v for p, v in live_leaves.items() if p not in dropped}
    result.update(applied)
    if mine["fields"] != set(applied):
        mine["time"] = now
    mine["fields"] = set(applied)
    _forget_missing(entries, result)
    return result


def update(old_leaves: dict, new_leaves: dict, entries: list[dict], manager: str, api_version: str,
           now: str) -> None:
    """An update by manager: it owns what it changed, and no one else does."""
    changed = {p for p, v in new_leaves.items() if p not in old_leaves or old_leaves[p] != v}
    if changed:
        for entry in entries:
            entry["fields"] -= changed
        entry = _entry(entries, manager, "Update", api_version, now)
        entry["fields"] |= changed
        entry["time"] = now
    _forget_missing(entries, new_leaves)


def _forget_missing(entries, leaves_now) -> None:
    for entry in entries:
        entry["fields"] &= set(leaves_now)
    entries[:] = [e for e in entries if e["fields"]]


def conflict_error(conflicts) -> status.ApiError:
    """internal.NewConflictError: 409 Conflict, a FieldManagerConflict cause per field."""
    def who(entry):
        name = json.dumps(entry["manager"])
        if entry["operation"] == "Update":
            return f"{name} using {entry['apiVersion']} at {entry['time']}"
        return name
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {who(e)}", "field": path_text(p)}
              for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {who(entry)}: {path_text(path)}"
    else:
        lines = []
        for name in sorted({who(e) for e, _ in conflicts}):
            lines.append(f"conflicts with {name}:")
            lines += [f"- {path_text(p)}" for e, p in conflicts if who(e) == name]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return status.ApiError(409, "Conflict", message, {"causes": causes})
