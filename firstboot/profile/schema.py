"""The JSON Schema in rack-profiles/schema.json: every key, its type, its
default and its meaning.

Validated with each pattern's `$` meaning the end of the string (as in
JSON Schema) and integers that are integers (not 6442.0, not true). The
schema's `default` values are the only declaration of the defaults:
with_defaults() fills them into a document the schema accepted."""

import copy
import functools
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema

from firstboot.profile.problems import Problem, kind

# Beside the agent in the image as in the repository (image/payload.py).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "rack-profiles" / "schema.json"

_format_checker = jsonschema.FormatChecker()


def _parses_as(parse, value) -> bool:
    if not isinstance(value, str):
        return True    # the type keyword reports it
    try:
        parse(value)
    except ValueError:
        return False
    return True


@_format_checker.checks("ipv4")
def _is_ipv4(value) -> bool:
    return _parses_as(ipaddress.IPv4Address, value)


@_format_checker.checks("ipv4-network")
def _is_ipv4_network(value) -> bool:
    return _parses_as(ipaddress.IPv4Network, value)   # strict: host bits must be zero


def anchored_at_end(pattern: str) -> str:
    """The pattern with each `$` anchor made `\\Z`.

    JSON Schema patterns are ECMA-262, where `$` is the end of the string;
    jsonschema runs them through Python's re.search, where `$` also matches
    before a final newline, so `^[a-z]+$` accepts "rack\\n". Escapes and
    character classes are copied as they are."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            for literal in ("^", "]"):        # "[^]...]" and "[]...]": that ] is literal
                if pattern[i:i + 1] == literal:
                    out.append(literal)
                    i += 1
            continue
        elif char == "$":
            char = r"\Z"
        out.append(char)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(anchored_at_end(pattern))


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker, instance) -> bool:
    # jsonschema's integer takes 6442.0 (JSON has one number type) and, being
    # Python, nothing stops True: a port must be written as an integer.
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@functools.lru_cache(maxsize=1)
def validator() -> jsonschema.protocols.Validator:
    schema = _schema()
    base = jsonschema.validators.validator_for(schema)
    strict = jsonschema.validators.extend(
        base, validators={"pattern": _pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", _is_integer))
    return strict(schema, format_checker=_format_checker)


_YAML_KIND = {"object": "a mapping", "array": "a list", "string": "a string",
              "integer": "an integer", "number": "a number", "boolean": "true or false",
              "null": "nothing"}


def _type_message(error: jsonschema.ValidationError) -> str:
    expected = error.validator_value
    expected = [expected] if isinstance(expected, str) else expected
    message = f"expected {' or '.join(_YAML_KIND[e] for e in expected)}, got {kind(error.instance)}"
    if expected == ["string"] and isinstance(error.instance, (int, float)):
        message += " (YAML read it as a number: put it in quotes)"
    return message


def _problems(error: jsonschema.ValidationError) -> Iterator[Problem]:
    """The error in the user's words: the schema's x-error where it has one."""
    path = tuple(error.absolute_path)
    custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
    if error.validator == "required":
        missing = error.message.split("'")[1]
        yield Problem(path + (missing,), "is required")
    elif error.validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(error.schema.get("properties", {}))):
            yield Problem(path + (key,), f"unknown key (allowed here: {allowed})")
    elif error.validator == "type":
        yield Problem(path, _type_message(error))
    elif error.validator == "enum":
        yield Problem(path, f"{error.instance!r} is not one of " + ", ".join(str(v) for v in error.validator_value))
    elif custom and error.validator in ("pattern", "format", "anyOf", "oneOf"):
        yield Problem(path, custom if isinstance(error.instance, (dict, list)) else f"{error.instance!r} {custom}")
    else:
        yield Problem(path, error.message)


def schema_problems(doc: dict) -> list[Problem]:
    """Everything the schema refuses in a merged document."""
    return [problem for error in validator().iter_errors(doc) for problem in _problems(error)]


def with_defaults(doc: dict) -> dict:
    """A copy of a document the schema accepted, with the schema's default
    filled in for every key it leaves out (and, inside a default, for that
    default's own keys)."""
    return _fill(copy.deepcopy(doc), _schema())


def _resolved(node: dict) -> dict:
    """A schema node with its $ref (#/$defs/NAME) followed; the node's own
    keywords (description, default) win over the definition's."""
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        node = {**_schema()["$defs"][name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill(instance, node: dict):
    node = _resolved(node)
    if isinstance(instance, dict):
        for key, sub in node.get("properties", {}).items():
            sub = _resolved(sub)
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill(instance[key], sub)
    elif isinstance(instance, list) and isinstance(node.get("items"), dict):
        for item in instance:
            _fill(item, node["items"])
    return instance
