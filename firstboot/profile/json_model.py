"""The rack model as JSON: what the build writes beside each rack's rendered
tree, so the agent reads a checked model at boot instead of checking the
YAML again.

The JSON follows the dataclasses field by field: addresses, networks and
paths as strings, enums as their values, tuples as lists, None as null,
secret references as {"ref": TEXT, "key": KEY or null}, secret prefixes as text. FORMAT_VERSION
changes whenever that shape does; from_json refuses any other version, and
any object with keys missing or left over, rather than guess."""

import dataclasses
import enum
import functools
import ipaddress
import types
import typing
from pathlib import Path

from firstboot import secretref
from firstboot.errors import BadInput
from firstboot.profile.model import RackProfile
from firstboot.profile.problems import Keys, format_path, kind

FORMAT_VERSION = 5     # 2: jumphost.ssh_host, k3s.attach_port; 3: migration.legacy_address;
                       # 4: secret_imports, image_pull_secrets; 5: k3s.ca
VERSION_KEY = "format_version"
_AS_STRING = (ipaddress.IPv4Address, ipaddress.IPv4Network, Path)   # each made again from its str()


class _Wrong(Exception):
    def __init__(self, path: Keys, message: str):
        super().__init__(message)
        self.path = path


def to_json(profile: RackProfile) -> dict:
    """The profile as a JSON object (json.dumps takes it as it is)."""
    return {VERSION_KEY: FORMAT_VERSION, **_encode(profile, RackProfile)}


def from_json(data: object) -> RackProfile:
    """The profile to_json wrote; BadInput if data is not one, in this format."""
    if not isinstance(data, dict):
        raise BadInput(f"rack model: expected a JSON object, got {kind(data)}")
    version = data.get(VERSION_KEY)
    if type(version) is not int or version != FORMAT_VERSION:
        found = f"{VERSION_KEY} {version!r}" if VERSION_KEY in data else f"no {VERSION_KEY}"
        raise BadInput(f"rack model: {found}: this rackboot reads {VERSION_KEY} {FORMAT_VERSION} only",
                       hint="the model was written by another rackboot: build the image again with this one")
    fields = {key: value for key, value in data.items() if key != VERSION_KEY}
    try:
        return _decode(fields, RackProfile, ())
    except _Wrong as wrong:
        raise BadInput(f"rack model: {format_path(wrong.path)}: {wrong}",
                       hint="the model is written by the build: build the image again") from None


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _optional(hint) -> object | None:
    """X for X | None, else None."""
    if isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint):
        [inner] = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner
    return None


def _encode(value, hint):
    if (inner := _optional(hint)) is not None:
        return None if value is None else _encode(value, inner)
    if hint is secretref.SecretRef:
        return {"ref": str(value), "key": value.key}
    if hint is secretref.SecretPrefix:
        return str(value)
    if dataclasses.is_dataclass(hint):
        return {name: _encode(getattr(value, name), field_hint) for name, field_hint in _hints(hint).items()}
    if typing.get_origin(hint) is tuple:
        return [_encode(item, item_hint) for item, item_hint in zip(value, _item_hints(hint, len(value)))]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value.value
    if hint in _AS_STRING:
        return str(value)
    return value      # str, int


def _item_hints(hint, length: int) -> list:
    """The hint of each item of a tuple: tuple[X, ...] or tuple[A, B]."""
    args = typing.get_args(hint)
    return [args[0]] * length if len(args) == 2 and args[1] is Ellipsis else list(args)


def _expect(value, python: type, path: Keys, words: str) -> None:
    if not isinstance(value, python) or (python is int and isinstance(value, bool)):
        raise _Wrong(path, f"expected {words}, got {kind(value)}")


def _decode_object(value, cls: type, path: Keys):
    _expect(value, dict, path, "an object")
    hints = _hints(cls)
    if missing := [name for name in hints if name not in value]:
        raise _Wrong(path + (missing[0],), "is missing")
    if extra := sorted(set(value) - set(hints)):
        raise _Wrong(path + (extra[0],), f"unknown key (allowed here: {', '.join(hints)})")
    return cls(**{name: _decode(value[name], field_hint, path + (name,)) for name, field_hint in hints.items()})


def _decode_tuple(value, hint, path: Keys) -> tuple:
    _expect(value, list, path, "a list")
    item_hints = _item_hints(hint, len(value))
    if len(item_hints) != len(value):
        raise _Wrong(path, f"expected {len(item_hints)} items, got {len(value)}")
    return tuple(_decode(item, item_hint, path + (i,)) for i, (item, item_hint) in enumerate(zip(value, item_hints)))


def _decode_secret(value, path: Keys) -> secretref.SecretRef:
    _expect(value, dict, path, "an object")
    if set(value) != {"ref", "key"}:
        raise _Wrong(path, "expected the keys ref and key")
    _expect(value["ref"], str, path + ("ref",), "a string")
    if value["key"] is not None:
        _expect(value["key"], str, path + ("key",), "a string")
    try:
        return secretref.parse(value["ref"], value["key"])
    except secretref.SecretRefError as err:
        raise _Wrong(path + ("ref",), str(err)) from None


def _decode_leaf(value, hint, path: Keys):
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        _expect(value, str, path, "a string")
        try:
            return hint(value)
        except ValueError:
            raise _Wrong(path, f"{value!r} is not one of " + ", ".join(m.value for m in hint)) from None
    if hint in _AS_STRING:
        _expect(value, str, path, "a string")
        try:
            return hint(value)
        except ValueError as err:
            raise _Wrong(path, str(err)) from None
    _expect(value, hint, path, {str: "a string", int: "an integer"}[hint])
    return value


def _decode(value, hint, path: Keys):
    if (inner := _optional(hint)) is not None:
        return None if value is None else _decode(value, inner, path)
    if hint is secretref.SecretRef:
        return _decode_secret(value, path)
    if hint is secretref.SecretPrefix:
        _expect(value, str, path, "a string")
        try:
            return secretref.parse_prefix(value)
        except secretref.SecretRefError as err:
            raise _Wrong(path, str(err)) from None
    if dataclasses.is_dataclass(hint):
        return _decode_object(value, hint, path)
    if typing.get_origin(hint) is tuple:
        return _decode_tuple(value, hint, path)
    return _decode_leaf(value, hint, path)
