"""Rack profiles: YAML in, one frozen RackProfile per rack out.

The builder validates every profile with this module before doing any work,
and the first-boot agent reads the same profiles inside the image, so both
agree on what a rack is. Loading happens in three passes, each of which
collects every problem it finds instead of stopping at the first:

1. YAML, from a regular UTF-8 file of at most MAX_FILE_BYTES whose name is
   plain (PROFILE_NAME). Duplicate keys are errors (YAML would silently keep
   the last one), and so are keys that are not strings, anchors and aliases,
   and nesting deeper than MAX_DEPTH;
2. the JSON Schema in rack-profiles/schema.json, after merging defaults.yaml,
   with each pattern's `$` meaning the end of the string and integers that
   are integers (not 6442.0, not true);
3. meaning: duplicates, addresses outside the subnet, secret references,
   manifest paths, labels kubelet refuses, names YAML would read as other
   things, the netboot roots, and the same across all profiles given together.

Every problem is reported as `FILE: PATH: MESSAGE`, where FILE is the profile
or the defaults file the offending value came from.
"""

import enum
import functools
import hashlib
import ipaddress
import json
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from firstboot import files, secretref
from firstboot.errors import BadInput, ProfileError

DEFAULTS_NAME = "defaults.yaml"
RESERVED_LABEL_PREFIX = "rackboot.dev/"
NETBOOT_ROOTS = {"tftp_root": "/srv/rackboot/tftp", "nfs_root": "/srv/rackboot/pi-root"}  # the defaults
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "rack-profiles" / "schema.json"

Labels = tuple[tuple[str, str], ...]


class PiModel(enum.StrEnum):
    PI4 = "pi4"
    PI5 = "pi5"


class DhcpMode(enum.StrEnum):
    PROXY = "proxy"
    FULL = "full"


class BootDirBy(enum.StrEnum):
    SERIAL = "serial"
    MAC = "mac"


class RancherStorage(enum.StrEnum):
    TMPFS = "tmpfs"
    SD = "sd"


@dataclass(frozen=True)
class Network:
    subnet: ipaddress.IPv4Network
    router: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...]
    domain: str | None


@dataclass(frozen=True)
class Identify:
    macs: tuple[str, ...]
    router_mac: str | None


@dataclass(frozen=True)
class Jumphost:
    hostname: str
    address: ipaddress.IPv4Address
    uplink: str
    ssh_authorized_keys: tuple[str, ...]
    identify: Identify


@dataclass(frozen=True)
class K3s:
    version: str
    token: secretref.SecretRef
    api_port: int
    disable: tuple[str, ...]
    tls_san: tuple[str, ...]
    node_labels: Labels


@dataclass(frozen=True)
class Pi:
    name: str
    model: PiModel
    mac: str | None
    serial: str | None
    address: ipaddress.IPv4Address | None
    labels: Labels


@dataclass(frozen=True)
class Netboot:
    dhcp: DhcpMode
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    boot_dir_by: BootDirBy
    rancher_storage: RancherStorage
    tftp_root: str
    nfs_root: str
    join_port: int


@dataclass(frozen=True)
class KubeSecret:
    name: str
    namespace: str
    type: str
    data: tuple[tuple[str, secretref.SecretRef], ...]


@dataclass(frozen=True)
class RackProfile:
    rack: str
    description: str
    source: Path                   # the profile file
    digest: str                    # sha256 of the merged profile: changes iff the rack does
    network: Network
    jumphost: Jumphost
    k3s: K3s
    pis: tuple[Pi, ...]
    netboot: Netboot
    manifests: tuple[Path, ...]    # resolved files, in apply order
    secrets: tuple[KubeSecret, ...]
    host_aliases: tuple[str, ...]

    def pi_boot_dir(self, pi: Pi) -> str:
        """The per-Pi TFTP directory the bootloader asks for."""
        if self.netboot.boot_dir_by is BootDirBy.SERIAL:
            return pi.serial
        return pi.mac.replace(":", "-")


# ---------------------------------------------------------------- YAML

# A profile is a few kilobytes (big-rack.yaml, 300 Pis, is 40 KB). The caps
# keep a wrong file (a disk image, /dev/zero, a FIFO, an alias bomb) from
# hanging the build or eating its memory, and stay far above any real rack.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
# The file name reaches generated files and logs: keep it to what any of them
# can carry unquoted.
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.yaml")

# YAML tags a mapping key may resolve to, as the user would say them.
_TAG_KIND = {"int": "an integer", "float": "a number", "bool": "true or false", "null": "null",
             "timestamp": "a date", "binary": "binary data", "merge": "a merge key (<<)",
             "value": "a value key (=)"}


def shown(path: Path | str) -> str:
    """A path as it may appear in a message: control characters escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)[1:-1]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, anchors and aliases,
    and nesting deeper than MAX_DEPTH.

    Aliases are refused rather than counted: a profile has no use for them,
    and an alias bomb (a few lines that expand to millions of nodes) is how
    YAML eats a machine's memory. The depth bound comes before PyYAML's
    recursive composer reaches Python's recursion limit."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in rack profiles: "
                "write the value out", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{event.anchor}) are not allowed in rack profiles", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _key_problems(node: yaml.Node, path: list) -> Iterator[tuple[list, str]]:
    """Every mapping key must be a string: JSON Schema, the merge with
    defaults and every consumer downstream know no other kind."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _key_problems(item, path + [index])
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                yield from _key_problems(value_node, path + [key_node.value])
                continue
            if isinstance(key_node, yaml.ScalarNode):
                kind = _TAG_KIND.get(key_node.tag.rsplit(":", 1)[-1], key_node.tag)
                yield path, (f"key {key_node.value!r} (line {line}) is not a string: YAML read it as "
                             f"{kind} (put it in quotes)")
            else:
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                yield path, f"key at line {line} is {kind}: keys must be strings"


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes, up to MAX_FILE_BYTES, never blocking on a FIFO
    or a device (firstboot/files.py)."""
    def refuse(message: str) -> ProfileError:
        return ProfileError([f"{shown(path)}: {message}"])

    try:
        return files.read_regular(path, MAX_FILE_BYTES)
    except files.NotRegularFile as err:
        raise refuse(f"is {err.kind}, not a regular file") from None
    except files.TooLarge as err:
        if err.size is None:
            raise refuse(f"is more than {MAX_FILE_BYTES} bytes; a rack profile is at most that") from None
        raise refuse(f"is {err.size} bytes; a rack profile is at most {MAX_FILE_BYTES} bytes") from None
    except OSError as err:
        raise refuse(f"cannot read: {err.strerror}") from None


def _read_yaml(path: Path) -> dict:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProfileError([f"{shown(path)}: is not UTF-8 text (byte 0x{data[err.start]:02x} "
                            f"at offset {err.start})"]) from None
    loader = None
    try:
        loader = _StrictLoader(text)   # the reader refuses control characters here
        node = loader.get_single_node()
        problems = list(_key_problems(node, [])) if node is not None else []
        if problems:
            raise ProfileError([f"{shown(path)}: {format_path(p)}: {m}" for p, m in problems])
        doc = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as err:
        before = text[:err.position]
        where = f"{shown(path)}:{before.count(chr(10)) + 1}:{err.position - before.rfind(chr(10))}"
        raise ProfileError([f"{where}: character U+{err.character:04X} is not allowed in YAML "
                            "(write it as an escape in a double-quoted string)"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown(path)}:{mark.line + 1}:{mark.column + 1}" if mark else shown(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        if context and problem.startswith("but "):   # "but found another document" needs what was expected
            problem = f"{context}, {problem}"
        raise ProfileError([f"{where}: {problem}"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ProfileError([f"{shown(path)}: (top level): expected a mapping, got {_kind(doc)}"])
    return doc


def _merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key; anything else in override replaces base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------- schema

_YAML_KIND = {"object": "a mapping", "array": "a list", "string": "a string",
              "integer": "an integer", "number": "a number", "boolean": "true or false",
              "null": "nothing"}


def _kind(value) -> str:
    for kind, python in (("null", type(None)), ("boolean", bool), ("object", dict),
                         ("array", list), ("string", str), ("integer", int), ("number", float)):
        if isinstance(value, python):
            return _YAML_KIND[kind]
    return type(value).__name__


def format_path(path: Iterable) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{shown(part)}" if text else shown(part))
    return text or "(top level)"


_format_checker = jsonschema.FormatChecker()


@_format_checker.checks("ipv4")
def _is_ipv4(value) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


@_format_checker.checks("ipv4-network")
def _is_ipv4_network(value) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Network(value)  # strict: host bits must be zero
    except ValueError:
        return False
    return True


def _anchored_at_end(pattern: str) -> str:
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
    return re.compile(_anchored_at_end(pattern))


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(checker, instance) -> bool:
    # jsonschema's integer takes 6442.0 (JSON has one number type) and, being
    # Python, nothing stops True: a port must be written as an integer.
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    base = jsonschema.validators.validator_for(schema)
    strict = jsonschema.validators.extend(
        base, validators={"pattern": _pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", _is_integer))
    return strict(schema, format_checker=_format_checker)


def _schema_problems(doc: dict) -> Iterator[tuple[list, str]]:
    for error in _validator().iter_errors(doc):
        path = list(error.absolute_path)
        custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
        if error.validator == "required":
            missing = error.message.split("'")[1]
            yield path + [missing], "is required"
        elif error.validator == "additionalProperties":
            allowed = ", ".join(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(error.schema.get("properties", {}))):
                yield path + [key], f"unknown key (allowed here: {allowed})"
        elif error.validator == "type":
            expected = error.validator_value
            expected = [expected] if isinstance(expected, str) else expected
            message = f"expected {' or '.join(_YAML_KIND[e] for e in expected)}, got {_kind(error.instance)}"
            if expected == ["string"] and isinstance(error.instance, (int, float)):
                message += " (YAML read it as a number: put it in quotes)"
            yield path, message
        elif error.validator == "enum":
            yield path, (f"{error.instance!r} is not one of "
                         + ", ".join(str(v) for v in error.validator_value))
        elif custom and error.validator in ("pattern", "format", "anyOf", "oneOf"):
            yield path, f"{error.instance!r} {custom}" if not isinstance(
                error.instance, (dict, list)) else custom
        else:
            yield path, error.message


# ---------------------------------------------------------------- meaning


def _mac(text: str) -> str:
    return text.lower().replace("-", ":")


def _labels(raw: dict | None) -> Labels:
    return tuple(sorted((raw or {}).items()))


def _parse_secret(raw) -> secretref.SecretRef:
    text, key = (raw["ref"], raw["key"]) if isinstance(raw, dict) else (raw, None)
    return secretref.parse(text, key)


# Manifest entries and the *.yaml files found in manifest directories: names
# any tool downstream (the image's file list, kubectl, logs) takes as they are.
# The schema's manifests pattern is the same as MANIFEST_ENTRY.
MANIFEST_ENTRY = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/?")
MANIFEST_NAME = re.compile(r"[A-Za-z0-9._-]+")
# netboot.tftp_root and nfs_root, as the schema's srvPath.
SRV_PATH = re.compile(r"/srv(/[A-Za-z0-9._-]+)+")


def _manifest_files(raw: list[str], base: Path, problems: list | None = None) -> tuple[Path, ...]:
    """The files named by the manifests entries, in order.

    An entry is a path inside the profile's directory: no '..', and no
    symbolic link anywhere below that directory, so what `check` saw is what
    goes into the image. Files are regular files; a directory contributes its
    *.yaml and *.yml files, sorted (not its subdirectories)."""
    def refuse(index: int, message: str) -> None:
        if problems is not None:
            problems.append((["manifests", index], message))

    manifests = []
    root = base.resolve()
    for index, entry in enumerate(raw):
        parts = [part for part in entry.split("/") if part not in ("", ".")]
        if entry.startswith("/") or ".." in parts:
            refuse(index, f"{entry!r} is outside the profile's directory (manifests are paths inside it, "
                          "without '..')")
            continue
        if not parts:
            refuse(index, f"{entry!r} is the profile's directory itself (name a directory of manifests in it)")
            continue
        path, mode = root, None
        for part in parts:
            path = path / part
            try:
                mode = path.lstat().st_mode
            except OSError:
                mode = None
                break
            if stat.S_ISLNK(mode):
                break
        if mode is None:
            refuse(index, f"{entry!r} does not exist (looked for {shown(path)})")
        elif stat.S_ISLNK(mode):
            refuse(index, f"{entry!r}: {shown(path)} is a symbolic link (manifests must be regular files "
                          "inside the profile's directory)")
        elif stat.S_ISDIR(mode):
            found = []
            try:
                children = sorted(path.iterdir())
            except OSError as err:
                refuse(index, f"{entry!r}: cannot list {shown(path)}: {err.strerror}")
                continue
            for child in children:
                if child.suffix not in (".yaml", ".yml"):
                    continue
                child_mode = child.lstat().st_mode
                if stat.S_ISLNK(child_mode):
                    refuse(index, f"{child.name!r} in {entry!r} is a symbolic link "
                                  "(manifests must be regular files)")
                elif not stat.S_ISREG(child_mode):
                    refuse(index, f"{child.name!r} in {entry!r} is not a regular file")
                elif not MANIFEST_NAME.fullmatch(child.name):
                    refuse(index, f"{child.name!r} in {entry!r} is not a manifest file name "
                                  "(letters, digits, '.', '_' and '-')")
                else:
                    found.append(child)
            if not found and not [c for c in children if c.suffix in (".yaml", ".yml")]:
                refuse(index, f"directory {entry!r} holds no *.yaml files")
            manifests.extend(found)
        elif stat.S_ISREG(mode):
            manifests.append(path)
        else:
            refuse(index, f"{entry!r} is not a regular file or a directory")
    return tuple(manifests)


def _duplicates(problems: list, what: str, items: Iterable[tuple[list, object]]) -> None:
    first_seen: dict = {}
    for path, value in items:
        if value is None:
            continue
        if value in first_seen:
            problems.append((path, f"duplicate {what} {str(value)!r} (also at {format_path(first_seen[value])})"))
        else:
            first_seen[value] = path


# Each check reads the raw (merged) document and appends (path, message).
# A check whose input the schema already rejected fails with one of these
# errors and is skipped: the schema's message names the cause.
_SKIP = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _addr(text):
    return ipaddress.IPv4Address(text) if isinstance(text, str) else None


def _pis(doc) -> list[dict]:
    return [pi if isinstance(pi, dict) else {} for pi in doc.get("pis", [])]


def _check_addresses(doc, source, problems):
    if not isinstance(doc["network"]["subnet"], str):
        return  # the schema reported it (IPv4Network would take an integer)
    subnet = ipaddress.IPv4Network(doc["network"]["subnet"])
    hosts = [(["network", "router"], doc["network"].get("router")),
             (["jumphost", "address"], doc["jumphost"].get("address"))]
    hosts += [(["pis", i, "address"], pi.get("address")) for i, pi in enumerate(_pis(doc))]
    rng = doc.get("netboot", {}).get("dhcp_range") or {}
    hosts += [(["netboot", "dhcp_range", end], rng.get(end)) for end in ("start", "end")]
    for path, text in hosts:
        try:
            address = _addr(text)
        except ValueError:
            continue  # the schema reported it
        if address is None:
            continue
        if address not in subnet:
            problems.append((path, f"{address} is outside the rack subnet {subnet}"))
        elif address == subnet.network_address:
            problems.append((path, f"{address} is the subnet's network address"))
        elif address == subnet.broadcast_address:
            problems.append((path, f"{address} is the subnet's broadcast address"))
    _duplicates(problems, "address", [(path, text) for path, text in hosts[:-2]])


def _check_dhcp(doc, source, problems):
    netboot = doc.get("netboot", {})
    full = netboot.get("dhcp") == DhcpMode.FULL
    rng = netboot.get("dhcp_range")
    if full and rng is None:
        problems.append((["netboot", "dhcp_range"], "is required when netboot.dhcp is 'full'"))
    if full:
        for i, pi in enumerate(_pis(doc)):
            if "address" in pi and "mac" not in pi:
                problems.append((["pis", i, "mac"], "is required for a fixed address when netboot.dhcp is 'full'"))
    if rng is not None:
        start, end = _addr(rng["start"]), _addr(rng["end"])
        if start > end:
            problems.append((["netboot", "dhcp_range"], f"start {start} is after end {end}"))
        for path in (["network", "router"], ["jumphost", "address"]):
            address = _addr(doc[path[0]][path[1]])
            if start <= address <= end:
                problems.append((["netboot", "dhcp_range"], f"contains {format_path(path)} {address}"))


def _check_names(doc, source, problems):
    pis = _pis(doc)
    _duplicates(problems, "name", [(["jumphost", "hostname"], doc["jumphost"].get("hostname"))]
                + [(["pis", i, "name"], pi.get("name")) for i, pi in enumerate(pis)])
    _duplicates(problems, "serial", [(["pis", i, "serial"], pi.get("serial")) for i, pi in enumerate(pis)])
    _duplicates(problems, "host alias", [(["host_aliases", i], a) for i, a in enumerate(doc.get("host_aliases", []))])
    _duplicates(problems, "secret", [(["secrets", i, "name"], f"{s.get('namespace', 'default')}/{s.get('name')}")
                                     for i, s in enumerate(doc.get("secrets", [])) if isinstance(s, dict)])


def _check_macs(doc, source, problems):
    macs = doc["jumphost"].get("identify", {}).get("macs", [])
    macs = macs if isinstance(macs, list) else []   # the schema reported anything else
    _duplicates(problems, "MAC", [(["jumphost", "identify", "macs", i], _mac(m)) for i, m in enumerate(macs)
                                  if isinstance(m, str)]
                + [(["pis", i, "mac"], _mac(pi["mac"]) if isinstance(pi.get("mac"), str) else None)
                   for i, pi in enumerate(_pis(doc))])


def _check_boot_dirs(doc, source, problems):
    by = doc.get("netboot", {}).get("boot_dir_by", BootDirBy.SERIAL)
    if by not in list(BootDirBy):
        return  # the schema reported it
    for i, pi in enumerate(_pis(doc)):
        if pi and by not in pi and ("mac" in pi or "serial" in pi):
            problems.append((["pis", i, by], f"is required: netboot.boot_dir_by is {by!r}"))


# Labels a kubelet may give its own node (--node-labels, which k3s's
# node-label passes on): none under kubernetes.io or k8s.io except these.
# kubernetes/kubernetes staging/src/k8s.io/kubelet/pkg/apis/well_known_labels.go
# (kubeletLabels, kubeletLabelNamespaces) and cmd/kubelet/app/options
# (isKubernetesLabel); kubelet refuses to start with any other.
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
    "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch"})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
NODE_RESTRICTION_NAMESPACE = "node-restriction.kubernetes.io"


def _in_namespace(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def _label_refusal(key: str) -> str | None:
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if key.startswith(RESERVED_LABEL_PREFIX):
        return f"the {RESERVED_LABEL_PREFIX} prefix is reserved: rackboot sets rack, role and model itself"
    if _in_namespace(namespace, NODE_RESTRICTION_NAMESPACE):
        return (f"a node cannot give itself {NODE_RESTRICTION_NAMESPACE}/ labels (NodeRestriction): "
                "rackboot's agent sets those through the API")
    kubernetes = _in_namespace(namespace, "kubernetes.io") or _in_namespace(namespace, "k8s.io")
    if kubernetes and key not in KUBELET_LABELS and not any(
            _in_namespace(namespace, allowed) for allowed in KUBELET_LABEL_NAMESPACES):
        return ("kubelet refuses node labels under kubernetes.io and k8s.io except "
                + ", ".join(f"{n}/*" for n in KUBELET_LABEL_NAMESPACES) + " and "
                + ", ".join(sorted(KUBELET_LABELS)))
    return None


def _check_labels(doc, source, problems):
    labelled = [(["k3s", "node_labels"], doc["k3s"].get("node_labels", {}))]
    labelled += [(["pis", i, "labels"], pi.get("labels", {})) for i, pi in enumerate(_pis(doc))]
    for path, labels in labelled:
        if not isinstance(labels, dict):
            continue  # the schema reported it
        for key in labels:
            refusal = _label_refusal(key) if isinstance(key, str) else None
            if refusal:
                problems.append((path + [key], refusal))


# Names the templates write as plain YAML scalars (cloud-init's seed, k3s's
# configs): a name YAML reads as something else ("0", "null", "on", "y",
# "2024-01-01", "0x1f", "1e3") would reach cloud-init or k3s as a number,
# null, a boolean or a date.
PLAIN_YAML_NAMES = [("rack",), ("jumphost", "hostname"), ("jumphost", "uplink"), ("network", "domain")]


# k3s reads its config with go-yaml, which also takes y and n as booleans,
# 1e3 as a number and 0o17 as an integer (go-yaml resolve.go).
_GO_YAML_BOOL = re.compile(r"[yYnN]")
_GO_YAML_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7_]+")


def _yaml_reading(value: str) -> str | None:
    """What a YAML parser makes of value as a plain scalar, unless a string."""
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))
    if tag != "tag:yaml.org,2002:str":
        return _TAG_KIND.get(tag.rsplit(":", 1)[-1], tag)
    if _GO_YAML_BOOL.fullmatch(value):
        return "true or false"
    if _GO_YAML_NUMBER.fullmatch(value):
        return "a number"
    return None


def _check_yaml_names(doc, source, problems):
    named = [(path, doc.get(path[0], {}).get(path[1]) if len(path) == 2 else doc.get(path[0]))
             for path in PLAIN_YAML_NAMES if len(path) == 1 or isinstance(doc.get(path[0]), dict)]
    named += [(["pis", i, "name"], pi.get("name")) for i, pi in enumerate(_pis(doc))]
    for path, value in named:
        kind = _yaml_reading(value) if isinstance(value, str) else None
        if kind:
            problems.append((list(path), f"{value!r} would be read as {kind} in the YAML files rackboot writes "
                                         "(cloud-init, k3s): choose another name"))


def _check_netboot_paths(doc, source, problems):
    """The TFTP and NFS roots land in dnsmasq's config, the exports file and
    the Pis' kernel command line: the schema keeps them to plain directories
    under /srv/; here they must also be two separate trees."""
    netboot = doc.get("netboot", {})
    roots = {name: netboot.get(name, default) for name, default in NETBOOT_ROOTS.items()}
    if not all(isinstance(value, str) and SRV_PATH.fullmatch(value) for value in roots.values()):
        return  # the schema reported it
    for name, value in roots.items():
        if {".", ".."} & set(value.split("/")):
            problems.append((["netboot", name], f"{value!r} has a '.' or '..' component"))
    tftp, nfs = roots["tftp_root"], roots["nfs_root"]
    if tftp == nfs:
        problems.append((["netboot", "nfs_root"], f"{nfs!r} is also netboot.tftp_root: the two must differ"))
    elif nfs.startswith(tftp + "/"):
        problems.append((["netboot", "nfs_root"], f"{nfs!r} is inside netboot.tftp_root {tftp!r}"))
    elif tftp.startswith(nfs + "/"):
        problems.append((["netboot", "tftp_root"], f"{tftp!r} is inside netboot.nfs_root {nfs!r}"))


def _check_secrets(doc, source, problems):
    refs = [(["k3s", "token"], doc["k3s"].get("token"))]
    for i, secret in enumerate(doc.get("secrets", [])):
        if isinstance(secret, dict) and isinstance(secret.get("data"), dict):
            refs += [(["secrets", i, "data", key], raw) for key, raw in secret["data"].items()]
    for path, raw in refs:
        try:
            _parse_secret(raw)
        except secretref.SecretRefError as err:
            problems.append((path, str(err)))
        except _SKIP:
            pass  # not a string or {ref, key}: the schema reported it


def _check_manifests(doc, source, problems):
    raw = doc.get("manifests", [])
    if not isinstance(raw, list):
        return  # the schema reported it
    # Entries the schema refused are not looked up (one problem each).
    entries = [(i, m) for i, m in enumerate(raw) if isinstance(m, str) and MANIFEST_ENTRY.fullmatch(m)]
    found: list = []
    _manifest_files([m for _, m in entries], source.parent, found)
    problems.extend((["manifests", entries[path[1]][0]], message) for path, message in found)


SEMANTIC_CHECKS = (_check_addresses, _check_dhcp, _check_names, _check_macs, _check_boot_dirs,
                   _check_labels, _check_yaml_names, _check_netboot_paths, _check_secrets, _check_manifests)


def _semantic_problems(doc: dict, source: Path) -> list[tuple[list, str]]:
    problems: list[tuple[list, str]] = []
    for check in SEMANTIC_CHECKS:
        found: list = []
        try:
            check(doc, source, found)
        except _SKIP:
            continue
        problems.extend(found)
    return problems


def _construct(doc: dict, source: Path) -> RackProfile:
    """Turn a document that passed every check into the frozen model."""
    net = doc["network"]
    jh = doc["jumphost"]
    ident = jh.get("identify", {})
    k = doc["k3s"]
    nb = doc.get("netboot", {})
    rng = nb.get("dhcp_range")
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return RackProfile(
        rack=doc["rack"],
        description=doc.get("description", ""),
        source=source,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
        network=Network(
            subnet=ipaddress.IPv4Network(net["subnet"]),
            router=ipaddress.IPv4Address(net["router"]),
            dns=tuple(ipaddress.IPv4Address(a) for a in net.get("dns", [net["router"]])),
            domain=net.get("domain")),
        jumphost=Jumphost(
            hostname=jh["hostname"],
            address=ipaddress.IPv4Address(jh["address"]),
            uplink=jh.get("uplink", "eth0"),
            ssh_authorized_keys=tuple(jh.get("ssh_authorized_keys", [])),
            identify=Identify(tuple(_mac(m) for m in ident.get("macs", [])),
                              _mac(ident["router_mac"]) if "router_mac" in ident else None)),
        k3s=K3s(k["version"], _parse_secret(k["token"]), k.get("api_port", 6443),
                tuple(k.get("disable", [])), tuple(k.get("tls_san", [])), _labels(k.get("node_labels"))),
        pis=tuple(
            Pi(name=p["name"], model=PiModel(p["model"]),
               mac=_mac(p["mac"]) if "mac" in p else None, serial=p.get("serial"),
               address=ipaddress.IPv4Address(p["address"]) if "address" in p else None,
               labels=_labels(p.get("labels")))
            for p in doc.get("pis", [])),
        netboot=Netboot(
            dhcp=DhcpMode(nb.get("dhcp", "proxy")),
            dhcp_range=(ipaddress.IPv4Address(rng["start"]), ipaddress.IPv4Address(rng["end"])) if rng else None,
            boot_dir_by=BootDirBy(nb.get("boot_dir_by", "serial")),
            rancher_storage=RancherStorage(nb.get("rancher_storage", "tmpfs")),
            tftp_root=nb.get("tftp_root", NETBOOT_ROOTS["tftp_root"]),
            nfs_root=nb.get("nfs_root", NETBOOT_ROOTS["nfs_root"]),
            join_port=nb.get("join_port", 6442)),
        manifests=_manifest_files(doc.get("manifests", []), source.parent),
        secrets=tuple(
            KubeSecret(s["name"], s.get("namespace", "default"), s.get("type", "Opaque"),
                       tuple((key, _parse_secret(raw)) for key, raw in sorted(s["data"].items())))
            for s in doc.get("secrets", [])),
        host_aliases=tuple(doc.get("host_aliases", [])))


# ---------------------------------------------------------------- entry points


def profile_paths(args: Iterable[str | Path]) -> list[Path]:
    """Expand directories to their profiles (every *.yaml except defaults.yaml)."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            paths.extend(sorted(p for p in path.glob("*.yaml") if p.name != DEFAULTS_NAME))
        elif path.name == DEFAULTS_NAME:
            raise BadInput(f"{shown(path)}: holds shared defaults, not a rack",
                           hint="name the rack profiles instead, or their directory")
        elif not path.exists():
            raise BadInput(f"{shown(path)}: no such rack profile")
        else:
            paths.append(path)
    if not paths:
        raise BadInput("no rack profiles given", hint="name files such as rack-profiles/example.yaml or a directory")
    return paths


def load_one(path: Path) -> tuple[RackProfile | None, list[str]]:
    """Load one profile; return it (or None) and its problems as text."""
    if not PROFILE_NAME.fullmatch(path.name):
        raise ProfileError([f"{shown(path)}: (file name): {path.name!r} is not a profile file name: letters, "
                            "digits, '.', '_' and '-', starting with a letter or digit, ending in .yaml"])
    rack_doc = _read_yaml(path)
    defaults_path = path.parent / DEFAULTS_NAME
    defaults_doc = _read_yaml(defaults_path) if defaults_path.exists() else {}
    doc = _merge(defaults_doc, rack_doc)

    def origin(location: list) -> Path:
        """The file a value came from, following _merge: the rack owns whatever
        it sets, down to whole lists; defaults own what only they set."""
        rack_part, default_part = rack_doc, defaults_doc
        for part in location:
            if isinstance(rack_part, dict) and part in rack_part:
                if isinstance(rack_part[part], dict) and isinstance(default_part, dict) \
                        and isinstance(default_part.get(part), dict):
                    rack_part, default_part = rack_part[part], default_part[part]
                    continue
                return path
            if isinstance(default_part, dict) and part in default_part:
                return defaults_path
            return path
        return path

    problems = list(_schema_problems(doc)) + _semantic_problems(doc, path)
    profile = None if problems else _construct(doc, path)
    lines = sorted({f"{shown(origin(p))}: {format_path(p)}: {m}" for p, m in problems})
    return profile, lines


def load_profiles(args: Iterable[str | Path]) -> list[RackProfile]:
    """Load and check every profile; raise ProfileError listing every problem."""
    problems: list[str] = []
    profiles: list[RackProfile] = []
    for path in profile_paths(args):
        try:
            profile, lines = load_one(path)
        except ProfileError as err:
            problems.extend(err.problems)
            continue
        problems.extend(lines)
        if profile:
            profiles.append(profile)
    problems.extend(_cross_profile_problems(profiles))
    if problems:
        raise ProfileError(problems)
    return profiles


def _cross_profile_problems(profiles: list[RackProfile]) -> list[str]:
    """Racks given together must be told apart: names and identifying MACs."""
    problems = []
    seen: dict = {}
    for profile in profiles:
        claims = [("rack", "rack name", profile.rack)]
        claims += [(f"jumphost.identify.macs[{i}]", "jumphost MAC", m)
                   for i, m in enumerate(profile.jumphost.identify.macs)]
        claims += [(f"pis[{i}].mac", "Pi MAC", pi.mac) for i, pi in enumerate(profile.pis) if pi.mac]
        claims += [(f"pis[{i}].serial", "Pi serial", pi.serial) for i, pi in enumerate(profile.pis) if pi.serial]
        for where, what, value in claims:
            key = (what.split()[-1], value)
            if key in seen and seen[key][0] != profile.source:
                other_source, other_where = seen[key]
                problems.append(f"{profile.source}: {where}: {what} {value!r} is also in {other_source} ({other_where})")
            else:
                seen.setdefault(key, (profile.source, where))
    return problems
