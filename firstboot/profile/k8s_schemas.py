"""The Kubernetes OpenAPI schemas of a k3s release, and what they refuse in
an object: the checks the API server's server-side apply makes before
anything else (structured-merge-diff's typed conversion).

The schemas are kubernetes-validate's (requirements.txt pins it), the
"-local-strict" flavour: every object has additionalProperties: false, as
server-side apply refuses a field the schema does not declare (500 "failed to
create typed patch object ... field not declared in schema"), whatever the
client's fieldValidation says. A Kubernetes minor the package lacks is an
error, never a neighbouring minor's schemas. They are read once per minor and
only when a profile has manifests: the builder's host needs them, the image
does not (the agent never checks YAML: firstboot/rack_model.py)."""

import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "kubernetes_validate"
_FLAVOUR = "-local-strict"


class SchemasMissing(Exception):
    """No schemas for a Kubernetes minor: the message says what there is."""


def kubernetes_minor(k3s_version: str) -> str:
    """v1.31.4+k3s1 -> 1.31 (the profile's schema already checked the tag's form)."""
    return ".".join(k3s_version.lstrip("v").split(".")[:2])


def _schema_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)     # found, not imported: its data is all we need
    if spec is None or not spec.submodule_search_locations:
        raise SchemasMissing(f"the {PACKAGE.replace('_', '-')} package is not installed on this machine "
                             "(./build.py installs requirements.txt into its virtualenv)")
    return Path(list(spec.submodule_search_locations)[0]) / "kubernetes-json-schema"


def _minors(root: Path) -> list[str]:
    found = (re.fullmatch(r"v(\d+\.\d+)\.0" + _FLAVOUR, p.name) for p in root.iterdir())
    return sorted((m.group(1) for m in found if m), key=lambda v: tuple(map(int, v.split("."))))


@functools.cache
def schemas_for(minor: str) -> "Schemas":
    """The schemas of Kubernetes minor (such as 1.31), read once."""
    root = _schema_root()
    path = root / f"v{minor}.0{_FLAVOUR}" / "_definitions.json"
    if not path.is_file():
        have = _minors(root)
        raise SchemasMissing(f"Kubernetes {minor}: kubernetes-validate has no schemas for it "
                             f"(it has {have[0]} to {have[-1]}); manifests cannot be checked")
    return Schemas(json.loads(path.read_text())["$defs"])


def group_version(api_version: str) -> tuple[str, str]:
    """apps/v1 -> (apps, v1); v1 -> ('', v1)."""
    group, _, version = api_version.rpartition("/")
    return group, version


class Schemas:
    """One minor's definitions, and a validator per kind as it is first asked for."""

    def __init__(self, definitions: dict):
        self.definitions = definitions
        self.by_kind = {(gvk["group"], gvk["version"], gvk["kind"]): name
                        for name, schema in definitions.items()
                        for gvk in schema.get("x-kubernetes-group-version-kind", [])}
        self._validators: dict[str, object] = {}

    def knows(self, api_version: str, kind: str) -> bool:
        return (*group_version(api_version), kind) in self.by_kind

    def kinds_of(self, api_version: str) -> list[str]:
        group, version = group_version(api_version)
        return sorted(k for g, v, k in self.by_kind if (g, v) == (group, version))

    def _validator(self, name: str):
        if name not in self._validators:
            import jsonschema
            root = {"$ref": f"#/$defs/{name}", "$defs": self.definitions}
            self._validators[name] = jsonschema.Draft202012Validator(root)
        return self._validators[name]

    def problems(self, body: dict) -> Iterator[tuple[tuple, str]]:
        """(path in the object, message) for each thing the schema refuses."""
        name = self.by_kind[(*group_version(body["apiVersion"]), body["kind"])]
        for error in self._validator(name).iter_errors(body):
            yield from _described(error)


_TYPES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
          "object": "a mapping", "array": "a list", "null": "nothing"}


def _is(value) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "an integer" if isinstance(value, int) else "a number"
    return {str: "a string", dict: "a mapping", list: "a list"}.get(type(value), "nothing")


def _expected(types) -> str:
    wanted = [t for t in ([types] if isinstance(types, str) else types) if t != "null"]
    return " or ".join(_TYPES.get(t, t) for t in wanted)


def _described(error) -> Iterator[tuple[tuple, str]]:
    """jsonschema's error as the API server would put it, at the path of the field."""
    path, value, schema = tuple(error.absolute_path), error.instance, error.schema
    if error.validator == "additionalProperties":
        declared = schema.get("properties", {})
        for key in sorted(k for k in value if k not in declared):
            yield (*path, key), "unknown field: the API server refuses it (field not declared in schema)"
    elif error.validator == "type":
        yield path, f"expected {_expected(error.validator_value)}, got {_is(value)} ({json.dumps(value)[:60]})"
    elif error.validator in ("oneOf", "anyOf"):
        types = [s.get("type", []) for s in error.validator_value]
        expected = " or ".join(_expected(t) for t in types if t)
        yield path, f"expected {expected or 'something else'}, got {_is(value)} ({json.dumps(value)[:60]})"
    elif error.validator == "required":
        missing = re.match(r"'([^']*)'", error.message)
        yield (*path, missing.group(1) if missing else "?"), "required"
    elif error.validator == "enum":
        yield path, f"{json.dumps(value)} is not one of {', '.join(map(json.dumps, error.validator_value))}"
    else:
        yield path, error.message
