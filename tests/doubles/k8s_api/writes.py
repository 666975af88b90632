"""Writes through the API, in the real API server's order: decode against the
schema, apply (field ownership), admission (namespace lifecycle, the caller's
NodeRestriction), validation (422), then store, unless dryRun=All.

The field manager of a create, update or patch is ?fieldManager= or, as the
API server derives it, the User-Agent up to its first '/'."""

import base64
import binascii
import copy
import ipaddress
import re
from dataclasses import dataclass, field

from . import fields, status, validation
from .schema import Decoded, Schemas, decode
from .store import IMMORTAL_NAMESPACES, Store, now

SERVICE_RANGE = ipaddress.ip_network("10.43.0.0/16")      # k3s's default service CIDR


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> str:
        return f"{self.api_version if self.group else '/' + self.version}, Kind={self.kind}"


@dataclass
class Request:
    resource: Resource
    namespace: str
    name: str | None
    query: dict
    user_agent: str
    admit: object            # admit(current, new) -> new: the caller's admission (NodeRestriction)
    warnings: list = field(default_factory=list)      # Warning: 299 headers of the answer

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"

    @property
    def manager(self) -> str:
        return self.query.get("fieldManager") or self.user_agent.split("/", 1)[0] or "unknown"


class Api:
    def __init__(self, store: Store, schemas: Schemas):
        self.store, self.schemas = store, schemas

    def top(self, res: Resource) -> dict:
        return {"$ref": "#/$defs/" + self.schemas.top(res.group, res.version, res.kind)[1]}

    # --- decoding ------------------------------------------------------------

    def decoded_body(self, req: Request, doc: dict) -> tuple[dict, Decoded]:
        """A create's or update's body as encoding/json and the strict decoder take it."""
        res = req.resource
        found = decode(self.schemas, self.top(res), doc)
        cannot = f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
        if found.wrong_type:
            raise status.bad_request(cannot + _unmarshal_error(found.wrong_type[0]))
        problem = base64_problem(res, doc)
        if problem:
            raise status.bad_request(cannot + problem)
        return self.unknown_fields(req, doc, found), found

    def unknown_fields(self, req: Request, doc: dict, found: Decoded) -> dict:
        directive = req.query.get("fieldValidation", "Warn")
        if found.unknown and directive == "Strict":
            raise status.bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"'
                                                                           for p, _ in found.unknown))
        if found.unknown and directive == "Warn":
            req.warnings += [f'unknown field "{p}"' for p, _ in found.unknown]
        return drop_unknown(doc, [p for p, _ in found.unknown])

    # --- the verbs -----------------------------------------------------------

    def create(self, req: Request, doc: dict) -> tuple[int, dict]:
        doc, found = self.decoded_body(req, doc)
        obj = self.admitted(req, None, doc)
        entries = []
        fields.update({}, self.leaves(req, obj), entries, req.manager, req.resource.api_version, now())
        return 201, self.stored(req, None, obj, entries)

    def replace(self, req: Request, current: dict, doc: dict) -> tuple[int, dict]:
        doc, found = self.decoded_body(req, doc)
        return 200, self.updated(req, current, doc)

    def merge_patch(self, req: Request, current: dict, patch: dict) -> tuple[int, dict]:
        res = req.resource
        merged = merge_patch(current, patch)
        found = decode(self.schemas, self.top(res), merged)
        problem = base64_problem(res, merged)
        if found.wrong_type or problem:
            why = problem or _unmarshal_error(found.wrong_type[0])
            raise status.invalid_object("", "", "", [status.invalid("patch", str(patch), why)])
        return 200, self.updated(req, current, self.unknown_fields(req, merged, found))

    def apply(self, req: Request, current: dict | None, patch: dict) -> tuple[int, dict]:
        res = req.resource
        if not req.query.get("fieldManager"):
            raise status.bad_request("PATCH, fieldManager: Required value: is required for apply patch")
        if patch.get("apiVersion") != res.api_version:
            raise status.bad_request("Incorrect version specified in apply patch. Specified patch version: "
                                     f"{patch.get('apiVersion')}, expected: {res.api_version}")
        if (patch.get("metadata") or {}).get("managedFields") is not None:
            raise status.bad_request("metadata.managedFields must be nil")
        where = f"{req.namespace}/{req.name}; {res.gvk}"
        found = decode(self.schemas, self.top(res), patch)
        errors = found.smd_errors()
        if errors:     # structured-merge-diff's typed conversion: a plain error, hence 500
            text = errors[0] if len(errors) == 1 else "errors:\n  " + "\n  ".join(errors)
            raise status.internal(f"failed to create typed patch object ({where}): {text}")
        entries = fields.owners(current)
        live = self.leaves(req, current or {})
        force = req.query.get("force") == "true"
        result = fields.apply(live, self.leaves(req, patch), entries, req.query["fieldManager"],
                              res.api_version, force, now())
        obj = fields.rebuild(result)
        obj.update(apiVersion=res.api_version, kind=res.kind)
        meta = obj.setdefault("metadata", {})
        for key, value in ((current or patch).get("metadata") or {}).items():
            if key in fields.NOT_OWNED_META and key != "managedFields":
                meta.setdefault(key, value)
        problem = base64_problem(res, obj)
        if problem:
            raise status.internal(f"failed to convert to versioned ({where}): {problem}")
        if current is None:
            return 201, self.stored(req, None, self.admitted(req, None, obj), entries)
        return 200, self.stored(req, current, self.admitted(req, current, obj), entries)

    def delete(self, req: Request, current: dict) -> tuple[int, dict]:
        res = req.resource
        req.admit(current, None)
        if res.plural == "namespaces":
            if req.name in IMMORTAL_NAMESPACES:
                raise status.forbidden("namespaces", req.name, "this namespace may not be deleted")
            if current["metadata"].get("deletionTimestamp"):
                raise status.conflict("namespaces", req.name, "The system is ensuring all content is removed from "
                                      "this namespace.  Upon completion, this namespace will automatically be "
                                      "purged by the system.")
            return 200, self.store.terminate_namespace(req.name, req.dry_run)
        if not req.dry_run:
            self.store.delete(res.plural, req.namespace, req.name)
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": status.details(req.name, res.group, res.plural, None) | {"uid": current["metadata"]["uid"]}}

    # --- shared steps --------------------------------------------------------

    def leaves(self, req: Request, obj: dict) -> dict:
        return fields.leaves(self.schemas, self.top(req.resource), obj)

    def updated(self, req: Request, current: dict, doc: dict) -> dict:
        res = req.resource
        wanted = (doc.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"].get("resourceVersion"):
            # An update (or patch) naming the resourceVersion it read: optimistic concurrency.
            raise status.conflict(res.plural, req.name, "the object has been modified; please apply your "
                                  "changes to the latest version and try again", res.group)
        if res.kind == "Service":       # an update that leaves the cluster IP out keeps it
            allocated = (current.get("spec") or {}).get("clusterIP")
            if allocated and not (doc.get("spec") or {}).get("clusterIP"):
                doc.setdefault("spec", {})["clusterIP"] = allocated
        obj = self.admitted(req, current, doc)
        entries = fields.owners(current)
        fields.update(self.leaves(req, current), self.leaves(req, obj), entries, req.manager, res.api_version, now())
        return self.stored(req, current, obj, entries)

    def admitted(self, req: Request, current: dict | None, obj: dict) -> dict:
        """Mutating admission: NamespaceLifecycle (no namespace: 404; a create in a
        terminating one: 403), then the caller's (NodeRestriction)."""
        res = req.resource
        if res.namespaced:
            if not self.store.get("namespaces", "", req.namespace):
                raise status.not_found("namespaces", req.namespace)
            if current is None and self.store.terminating(req.namespace):
                why = f"unable to create new content in namespace {req.namespace} because it is being terminated"
                cause = {"reason": "NamespaceTerminating", "message": f"namespace {req.namespace} is being terminated",
                         "field": "metadata.namespace"}
                raise status.forbidden(res.plural, obj["metadata"].get("name"), why, res.group, [cause])
        return req.admit(current, obj)

    def stored(self, req: Request, current: dict | None, obj: dict, entries: list) -> dict:
        res = req.resource
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = req.namespace
        if current is None and res.kind == "Service":
            self.allocate_cluster_ip(obj)
        found = decode(self.schemas, self.top(res), obj)       # the object as it will be
        errors = validation.object_errors(res.kind, obj, res.namespaced, found)
        if current is not None:
            errors += validation.update_errors(res.kind, current, obj)
        if errors:
            raise status.invalid_object(res.kind, res.group, meta.get("name") or "", errors)
        meta["managedFields"] = fields.managed_fields(entries)
        if current is not None and "status" in current:
            obj["status"] = current["status"]      # the main resource does not write status
        else:
            obj.pop("status", None)
        return self.store.put(res.plural, req.namespace if res.namespaced else "", obj, req.dry_run)

    def allocate_cluster_ip(self, obj: dict) -> None:
        spec = obj.setdefault("spec", {})
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            return
        used = {(o.get("spec") or {}).get("clusterIP") for o in self.store.list("services")}
        if not spec.get("clusterIP"):
            spec["clusterIP"] = next(str(ip) for ip in list(SERVICE_RANGE.hosts())[9:] if str(ip) not in used)
        spec["clusterIPs"] = [spec["clusterIP"]]


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def base64_problem(res: Resource, obj: dict) -> str | None:
    """A Secret's data are bytes, base64 in JSON: encoding/json's error for one that is not."""
    if res.kind != "Secret":
        return None
    for value in (obj.get("data") or {}).values():
        if not isinstance(value, str):
            continue
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            bad = next((i for i, c in enumerate(value) if not re.fullmatch(r"[A-Za-z0-9+/=]", c)),
                       len(value) - len(value) % 4)
            return f"illegal base64 data at input byte {bad}"
    return None


def drop_unknown(doc: dict, paths: list[str]) -> dict:
    doc = copy.deepcopy(doc)
    for path in paths:
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        node = doc
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        node.pop(parts[-1], None)
    return doc


def _unmarshal_error(wrong) -> str:
    """encoding/json's UnmarshalTypeError: the innermost struct and the field's path without indices."""
    path, _, value, _, struct, go_type = wrong
    plain = re.sub(r"\[[^]]*\]", "", path)
    return f"json: cannot unmarshal {_json_name(value)} into Go struct field {struct}.{plain} of type {go_type}"


def _json_name(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), "null")
