"""The Kubernetes OpenAPI schemas of the k3s version in use, and what the API
server's decoders make of an object against them.

The schemas are kubernetes-validate's (PyPI, pinned in requirements.txt), the
"-local-strict" flavour of the version's minor: every object schema has
additionalProperties: false. A stand-in bundle carries them, descriptions
dropped, as k8s_api/schemas.json.gz inside the `k3s` executable
(tests/doubles/k3s_standin_bundle.py); run from the source tree, they are read
from the installed package.

What the real API server does with a body that does not fit (v1.31):
- create, update (JSON): encoding/json refuses a wrong type (400 "KIND in
  version ... cannot be handled as a KIND: json: cannot unmarshal ..."); an
  unknown field is dropped with a warning, or refused (400 "strict decoding
  error: unknown field ...") when the client asks for fieldValidation=Strict;
- server-side apply: structured-merge-diff converts the applied
  configuration to a typed value first, and an unknown field or a wrong type
  fails there, whatever fieldValidation says, as a plain error: 500 "failed
  to create typed patch object (NS/NAME; GV, Kind=KIND): .PATH: field not
  declared in schema" (kubernetes/kubernetes#122480; #139255 would make it a
  400 and is not in any k3s release);
- a missing required field or a value outside an enum is validation's: 422.
"""

import gzip
import json
import pkgutil
from dataclasses import dataclass, field

DATA = "schemas.json.gz"


def definitions_from_package(version: str) -> dict:
    """The $defs of kubernetes-validate's schemas for version's minor, descriptions dropped."""
    import importlib.resources

    minor = ".".join(version.lstrip("v").split(".")[:2])
    path = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{minor}.0-local-strict/_definitions.json")
    return _without_descriptions(json.loads(path.read_text())["$defs"])


def _without_descriptions(node):
    if isinstance(node, dict):
        return {k: _without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_descriptions(v) for v in node]
    return node


def packed(version: str) -> bytes:
    """schemas.json.gz for a bundle of version (deterministic: same bytes each time)."""
    text = json.dumps(definitions_from_package(version), sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode(), mtime=0)


class Schemas:
    def __init__(self, definitions: dict):
        self.defs = definitions
        self.by_kind = {}
        for name, schema in definitions.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                self.by_kind[(gvk["group"], gvk["version"], gvk["kind"])] = name

    @classmethod
    def load(cls, version: str) -> "Schemas":
        try:
            data = pkgutil.get_data(__package__, DATA)
        except OSError:
            data = None
        return cls(json.loads(gzip.decompress(data)) if data else definitions_from_package(version))

    def resolve(self, schema: dict) -> tuple[dict, str | None]:
        """(schema, definition name) behind a $ref."""
        ref = schema.get("$ref")
        if not ref:
            return schema, None
        name = ref.rsplit("/", 1)[1]
        return self.defs[name], name

    def top(self, group: str, version: str, kind: str) -> tuple[dict, str]:
        name = self.by_kind[(group, version, kind)]
        return self.defs[name], name


@dataclass
class Decoded:
    """What decoding found: each entry carries the field path (spec.replicas,
    spec.template.spec.containers[0].image) and the path as structured-merge-diff
    prints it (.spec.template.spec.containers[name="web"].image)."""
    unknown: list = field(default_factory=list)          # (path, smd_path)
    wrong_type: list = field(default_factory=list)       # (path, smd_path, value, expected, struct, go_type)
    required: list = field(default_factory=list)         # path
    unsupported: list = field(default_factory=list)      # (path, value, enum)

    def smd_errors(self) -> list[str]:
        errors = [f"{smd}: field not declared in schema" for _, smd in self.unknown]
        errors += [f"{smd}: expected {expected}, got {_smd_kind(value)}"
                   for _, smd, value, expected, _, _ in self.wrong_type]
        return errors


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), "null")


def _smd_kind(value) -> str:
    if isinstance(value, (dict, list)):
        return {dict: "map", list: "list"}[type(value)]
    return f"&value.valueUnstructured{{Value:{json.dumps(value)}}}"


def _expected(types: list[str], schema: dict) -> tuple[str, str]:
    """(what structured-merge-diff expects, the Go type encoding/json names)."""
    if "integer" in types:
        return "numeric (int or float)", schema.get("format", "int64")
    if "number" in types:
        return "numeric (int or float)", "float64"
    if "boolean" in types:
        return "boolean", "bool"
    if "string" in types:
        return "string", "string" if schema.get("format") != "byte" else "[]uint8"
    if "array" in types:
        return "list", "[]"
    return "map", "map"


def _accepts(types: list[str], value) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def decode(schemas: Schemas, schema: dict, value, path: str = "", smd: str = "", struct: str = "",
           found: Decoded | None = None) -> Decoded:
    found = found if found is not None else Decoded()
    schema, name = schemas.resolve(schema)
    struct = name.rsplit(".", 1)[1] if name else struct
    if value is None:
        return found
    if "oneOf" in schema:          # int-or-string, quantity
        if not any(_accepts(_types(s), value) for s in schema["oneOf"]):
            found.wrong_type.append((path, smd, value, "string or number", struct, "intstr.IntOrString"))
        return found
    types = _types(schema)
    if types and not _accepts(types, value):
        expected, go_type = _expected(types, schema)
        found.wrong_type.append((path, smd, value, expected, struct, go_type))
        return found
    if "enum" in schema and value not in schema["enum"]:
        found.unsupported.append((path, value, schema["enum"]))
    if isinstance(value, dict):
        _decode_object(schemas, schema, value, path, smd, struct, found)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            decode(schemas, schema["items"], item, f"{path}[{index}]", smd + _smd_item(schemas, schema, item, index),
                   struct, found)
    return found


def _decode_object(schemas, schema, value, path, smd, struct, found) -> None:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        sub = f"{path}.{key}" if path else key
        if key in properties:
            decode(schemas, properties[key], item, sub, f"{smd}.{key}", struct, found)
        elif isinstance(extra, dict):
            decode(schemas, extra, item, f"{path}[{key}]", f"{smd}.{key}", struct, found)
        elif extra is False or properties:
            found.unknown.append((sub, f"{smd}.{key}"))
    for key in schema.get("required", []):
        if value.get(key) is None:
            found.required.append(f"{path}.{key}" if path else key)


def _types(schema: dict) -> list[str]:
    types = schema.get("type") or []
    return [types] if isinstance(types, str) else types


def list_keys(schemas: Schemas, schema: dict) -> list[str] | None:
    """The keys server-side apply tells a list's items apart by (list-type map), else None."""
    schema, _ = schemas.resolve(schema)
    if schema.get("x-kubernetes-list-type") == "map":
        return schema.get("x-kubernetes-list-map-keys")
    return None


# A list-map key that the API server defaults when it is left out (SMD fills it from the schema's default).
KEY_DEFAULTS = {"protocol": "TCP"}


def item_key(keys: list[str], item) -> dict:
    item = item if isinstance(item, dict) else {}
    return {k: item.get(k, KEY_DEFAULTS.get(k)) for k in keys}


def _smd_item(schemas, schema, item, index) -> str:
    keys = list_keys(schemas, schema)
    if not keys:
        return f"[{index}]"
    return "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in item_key(keys, item).items()) + "]"
