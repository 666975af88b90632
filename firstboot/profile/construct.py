"""The frozen model, built from a merged document that passed every check,
with the schema's defaults filled in: so every key the schema requires or
defaults is there, and the keys read with .get() are the optional ones
that have no default (the model's None)."""

import hashlib
import ipaddress
import json
from pathlib import Path

from firstboot import secretref
from firstboot.profile.model import (BootDirBy, DhcpMode, Identify, Jumphost, K3s, KubeSecret, Labels, Migration,
                                     Netboot, Network, Pi, PiModel, RackProfile, RancherStorage, PullSecret, SecretImport)


def digest(doc: dict) -> str:
    """sha256 of the merged profile as written (before defaults): changes iff the rack does."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def mac(text: str) -> str:
    """A MAC as the model keeps it: lower case, ':'-separated."""
    return text.lower().replace("-", ":")


def parse_secret(raw: str | dict) -> secretref.SecretRef:
    """A secret reference as the schema takes it: a string, or {ref, key}."""
    text, key = (raw["ref"], raw["key"]) if isinstance(raw, dict) else (raw, None)
    return secretref.parse(text, key)


def _labels(raw: dict) -> Labels:
    return tuple(sorted(raw.items()))


def _network(raw: dict) -> Network:
    return Network(
        subnet=ipaddress.IPv4Network(raw["subnet"]),
        router=ipaddress.IPv4Address(raw["router"]),
        # A default the schema cannot hold as a value: it is another key's.
        dns=tuple(ipaddress.IPv4Address(a) for a in raw.get("dns", [raw["router"]])),
        domain=raw.get("domain"))


def _jumphost(raw: dict) -> Jumphost:
    identify = raw["identify"]
    return Jumphost(
        hostname=raw["hostname"],
        address=ipaddress.IPv4Address(raw["address"]),
        uplink=raw["uplink"],
        ssh_host=raw.get("ssh_host", raw["hostname"]),    # another key's value, as network.dns
        ssh_authorized_keys=tuple(raw["ssh_authorized_keys"]),
        identify=Identify(macs=tuple(mac(m) for m in identify["macs"]),
                          router_mac=mac(identify["router_mac"]) if "router_mac" in identify else None))


def _k3s(raw: dict) -> K3s:
    return K3s(version=raw["version"], token=parse_secret(raw["token"]), api_port=raw["api_port"],
               attach_port=raw.get("attach_port"), disable=tuple(raw["disable"]), tls_san=tuple(raw["tls_san"]),
               node_labels=_labels(raw["node_labels"]), ca=parse_secret(raw["ca"]) if "ca" in raw else None)


def _pi(raw: dict) -> Pi:
    return Pi(name=raw["name"], model=PiModel(raw["model"]),
              mac=mac(raw["mac"]) if "mac" in raw else None, serial=raw.get("serial"),
              address=ipaddress.IPv4Address(raw["address"]) if "address" in raw else None,
              labels=_labels(raw["labels"]))


def _netboot(raw: dict) -> Netboot:
    dhcp_range = raw.get("dhcp_range")
    return Netboot(
        dhcp=DhcpMode(raw["dhcp"]),
        dhcp_range=(ipaddress.IPv4Address(dhcp_range["start"]), ipaddress.IPv4Address(dhcp_range["end"]))
        if dhcp_range else None,
        boot_dir_by=BootDirBy(raw["boot_dir_by"]),
        rancher_storage=RancherStorage(raw["rancher_storage"]),
        tftp_root=raw["tftp_root"],
        nfs_root=raw["nfs_root"],
        join_port=raw["join_port"])


def _secret(raw: dict) -> KubeSecret:
    return KubeSecret(name=raw["name"], namespace=raw["namespace"], type=raw["type"],
                      data=tuple((key, parse_secret(ref)) for key, ref in sorted(raw["data"].items())))


def _migration(raw: dict) -> Migration:
    legacy = raw.get("legacy_address")
    return Migration(legacy_address=ipaddress.IPv4Address(legacy) if legacy is not None else None)


def _secret_import(raw: dict) -> SecretImport:
    return SecretImport(source=secretref.parse_prefix(raw["from"]), namespace=raw["namespace"],
                        required=tuple(raw["required"]), exclude=tuple(raw["exclude"]))


def rack_profile(doc: dict, source: Path, digest: str, manifests: tuple[Path, ...]) -> RackProfile:
    """The model of a checked document with its defaults (schema.with_defaults)."""
    return RackProfile(
        rack=doc["rack"],
        description=doc["description"],
        source=source,
        digest=digest,
        network=_network(doc["network"]),
        jumphost=_jumphost(doc["jumphost"]),
        k3s=_k3s(doc["k3s"]),
        pis=tuple(_pi(pi) for pi in doc["pis"]),
        netboot=_netboot(doc["netboot"]),
        manifests=manifests,
        secrets=tuple(_secret(secret) for secret in doc["secrets"]),
        host_aliases=tuple(doc["host_aliases"]),
        migration=_migration(doc["migration"]),
        secret_imports=tuple(_secret_import(entry) for entry in doc["secret_imports"]),
        image_pull_secrets=tuple(PullSecret(entry["namespace"], entry["secret"]) for entry in doc["image_pull_secrets"]))
