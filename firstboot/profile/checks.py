"""What the schema cannot say about one profile: duplicates, addresses
outside the subnet, secret references, labels kubelet refuses, names YAML
would read as other things, and the netboot roots.

Each check reads a merged document that the schema accepted, with the
schema's defaults filled in (schema.with_defaults), so it may index any key
the schema requires or defaults. A check that fails on such a document has
a bug: nothing here catches it."""

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator

import yaml

from firstboot import secretref
from firstboot.profile.construct import mac, parse_secret
from firstboot.profile.labels import label_refusal
from firstboot.profile.model import DhcpMode
from firstboot.profile.problems import Keys, Problem, format_path
from firstboot.profile.secret_checks import prefix_problems
from firstboot.profile.yaml_input import TAG_KIND


def _duplicates(what: str, items: Iterable[tuple[Keys, object]]) -> Iterator[Problem]:
    first_seen: dict = {}
    for path, value in items:
        if value is None:
            continue
        if value in first_seen:
            yield Problem(path, f"duplicate {what} {str(value)!r} (also at {format_path(first_seen[value])})")
        else:
            first_seen[value] = path


def _check_addresses(doc: dict) -> Iterator[Problem]:
    subnet = ipaddress.IPv4Network(doc["network"]["subnet"])
    hosts = [(("network", "router"), doc["network"]["router"]), (("jumphost", "address"), doc["jumphost"]["address"])]
    hosts += [(("pis", i, "address"), pi.get("address")) for i, pi in enumerate(doc["pis"])]
    hosts.append((("migration", "legacy_address"), doc["migration"].get("legacy_address")))   # on the rack too
    dhcp_range = doc["netboot"].get("dhcp_range") or {}
    ends = [(("netboot", "dhcp_range", end), text) for end, text in dhcp_range.items()]
    for path, text in hosts + ends:
        if text is None:
            continue
        address = ipaddress.IPv4Address(text)
        if address not in subnet:
            yield Problem(path, f"{address} is outside the rack subnet {subnet}")
        elif address == subnet.network_address:
            yield Problem(path, f"{address} is the subnet's network address")
        elif address == subnet.broadcast_address:
            yield Problem(path, f"{address} is the subnet's broadcast address")
    yield from _duplicates("address", hosts)


def _check_dhcp(doc: dict) -> Iterator[Problem]:
    netboot = doc["netboot"]
    full = netboot["dhcp"] == DhcpMode.FULL
    dhcp_range = netboot.get("dhcp_range")
    if full and dhcp_range is None:
        yield Problem(("netboot", "dhcp_range"), "is required when netboot.dhcp is 'full'")
    if full:
        for i, pi in enumerate(doc["pis"]):
            if "address" in pi and "mac" not in pi:
                yield Problem(("pis", i, "mac"), "is required for a fixed address when netboot.dhcp is 'full'")
    if dhcp_range is not None:
        start, end = (ipaddress.IPv4Address(dhcp_range[end]) for end in ("start", "end"))
        if start > end:
            yield Problem(("netboot", "dhcp_range"), f"start {start} is after end {end}")
        for path in (("network", "router"), ("jumphost", "address"), ("migration", "legacy_address")):
            if path[1] not in doc[path[0]]:
                continue
            address = ipaddress.IPv4Address(doc[path[0]][path[1]])
            if start <= address <= end:
                yield Problem(("netboot", "dhcp_range"), f"contains {format_path(path)} {address}")


def _check_names(doc: dict) -> Iterator[Problem]:
    pis = doc["pis"]
    yield from _duplicates("name", [(("jumphost", "hostname"), doc["jumphost"]["hostname"])]
                           + [(("pis", i, "name"), pi["name"]) for i, pi in enumerate(pis)])
    yield from _duplicates("serial", [(("pis", i, "serial"), pi.get("serial")) for i, pi in enumerate(pis)])
    yield from _duplicates("host alias", [(("host_aliases", i), a) for i, a in enumerate(doc["host_aliases"])])
    yield from _duplicates("secret", [(("secrets", i, "name"), f"{s['namespace']}/{s['name']}")
                                      for i, s in enumerate(doc["secrets"])])


def _check_macs(doc: dict) -> Iterator[Problem]:
    macs = [(("jumphost", "identify", "macs", i), mac(m)) for i, m in enumerate(doc["jumphost"]["identify"]["macs"])]
    macs += [(("pis", i, "mac"), mac(pi["mac"])) for i, pi in enumerate(doc["pis"]) if "mac" in pi]
    yield from _duplicates("MAC", macs)


def _check_boot_dirs(doc: dict) -> Iterator[Problem]:
    by = doc["netboot"]["boot_dir_by"]
    for i, pi in enumerate(doc["pis"]):
        if by not in pi:
            yield Problem(("pis", i, by), f"is required: netboot.boot_dir_by is {by!r}")


def _check_labels(doc: dict) -> Iterator[Problem]:
    labelled = [(("k3s", "node_labels"), doc["k3s"]["node_labels"])]
    labelled += [(("pis", i, "labels"), pi["labels"]) for i, pi in enumerate(doc["pis"])]
    for path, labels in labelled:
        for key in labels:
            refusal = label_refusal(key)
            if refusal:
                yield Problem(path + (key,), refusal)


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
        return TAG_KIND.get(tag.rsplit(":", 1)[-1], tag)
    if _GO_YAML_BOOL.fullmatch(value):
        return "true or false"
    if _GO_YAML_NUMBER.fullmatch(value):
        return "a number"
    return None


def _check_yaml_names(doc: dict) -> Iterator[Problem]:
    named = [(path, doc[path[0]] if len(path) == 1 else doc[path[0]].get(path[1])) for path in PLAIN_YAML_NAMES]
    named += [(("pis", i, "name"), pi["name"]) for i, pi in enumerate(doc["pis"])]
    for path, value in named:
        reading = _yaml_reading(value) if value is not None else None
        if reading:
            yield Problem(path, f"{value!r} would be read as {reading} in the YAML files rackboot writes "
                                "(cloud-init, k3s): choose another name")


def _check_netboot_paths(doc: dict) -> Iterator[Problem]:
    """The TFTP and NFS roots land in dnsmasq's config, the exports file and
    the Pis' kernel command line: the schema keeps them to plain directories
    under /srv/; here they must also be two separate trees."""
    tftp, nfs = doc["netboot"]["tftp_root"], doc["netboot"]["nfs_root"]
    for name, value in (("tftp_root", tftp), ("nfs_root", nfs)):
        if {".", ".."} & set(value.split("/")):
            yield Problem(("netboot", name), f"{value!r} has a '.' or '..' component")
    if tftp == nfs:
        yield Problem(("netboot", "nfs_root"), f"{nfs!r} is also netboot.tftp_root: the two must differ")
    elif nfs.startswith(tftp + "/"):
        yield Problem(("netboot", "nfs_root"), f"{nfs!r} is inside netboot.tftp_root {tftp!r}")
    elif tftp.startswith(nfs + "/"):
        yield Problem(("netboot", "tftp_root"), f"{tftp!r} is inside netboot.nfs_root {nfs!r}")


def _check_ssh_host(doc: dict) -> Iterator[Problem]:
    """RFC 1123 (2.1): a name that looks like a dotted-decimal number is read as
    an address, so it must be one (ssh would try 999.1.1.1 as a name)."""
    host = doc["jumphost"].get("ssh_host")
    if host is not None and all(label.isdigit() for label in host.split(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            yield Problem(("jumphost", "ssh_host"), f"{host!r} looks like an IPv4 address but is not one")


def _check_secrets(doc: dict) -> Iterator[Problem]:
    refs = [(("k3s", "token"), doc["k3s"]["token"])]
    if "ca" in doc["k3s"]:
        refs.append((("k3s", "ca"), doc["k3s"]["ca"]))
    for i, secret in enumerate(doc["secrets"]):
        refs += [(("secrets", i, "data", key), raw) for key, raw in secret["data"].items()]
    for path, raw in refs:
        try:
            parse_secret(raw)
        except secretref.SecretRefError as err:
            yield Problem(path, str(err))


# Looked at on 2026-11-26 (README, "Raspberry Pi 5"): the Debian kernels a Pi
# root is built with cannot run a Pi 5 from the network. Debian 13's 6.12 has
# only a minimal bcm2712 device tree (CPUs, SD card, UART: no PCIe, so no
# RP1) and no RP1 drivers, and the Pi 5's Ethernet is on RP1; Debian 12's 6.1
# has no bcm2712 at all. (trixie-backports' 7.x has both.)
PI5_REFUSAL = ("a Raspberry Pi 5 cannot boot from the network with the Debian kernels rackboot builds with: "
               "its Ethernet is on the RP1 chip, which Debian 13's kernel (6.12) has no driver or device tree "
               "for, so it could not mount its NFS root; use pi4 (see the README's 'Raspberry Pi 5')")


def _check_port_80(doc: dict) -> Iterator[Problem]:
    """The host aliases are answered on port 80 of the jumphost, which k3s's
    ServiceLB binds for traefik's LoadBalancer Service: without it nothing does."""
    disabled = doc["k3s"]["disable"]
    if "servicelb" in disabled and doc["host_aliases"]:
        yield Problem(("k3s", "disable", disabled.index("servicelb")),
                      f"servicelb: nothing would listen on port 80 of the jumphost, where the rack router sends "
                      f"the host_aliases ({', '.join(doc['host_aliases'])}); keep ServiceLB, or drop the aliases")


def _check_models(doc: dict) -> Iterator[Problem]:
    for i, pi in enumerate(doc["pis"]):
        if pi["model"] == "pi5":
            yield Problem(("pis", i, "model"), PI5_REFUSAL)


SEMANTIC_CHECKS: tuple[Callable[[dict], Iterator[Problem]], ...] = (
    _check_addresses, _check_dhcp, _check_names, _check_macs, _check_boot_dirs, _check_labels,
    _check_yaml_names, _check_netboot_paths, _check_ssh_host, _check_secrets, _check_models,
    _check_port_80, prefix_problems)


def semantic_problems(doc: dict) -> list[Problem]:
    """Every problem of meaning in a schema-valid document with its defaults."""
    return [problem for check in SEMANTIC_CHECKS for problem in check(doc)]
