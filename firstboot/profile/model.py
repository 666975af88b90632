"""The rack profile model: what a rack is, once its YAML has been read and
checked. Frozen dataclasses with an enum for every choice; nothing
downstream reads the YAML or its dicts."""

import enum
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from firstboot import secretref

Labels = tuple[tuple[str, str], ...]   # sorted (key, value) pairs


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
    macs: tuple[str, ...]          # lower case, ':'-separated
    router_mac: str | None


@dataclass(frozen=True)
class Jumphost:
    hostname: str
    address: ipaddress.IPv4Address
    uplink: str
    ssh_host: str                  # how operators reach it over ssh (attach, clusters.json)
    ssh_authorized_keys: tuple[str, ...]
    identify: Identify


@dataclass(frozen=True)
class K3s:
    version: str
    token: secretref.SecretRef
    api_port: int
    attach_port: int | None        # the operator's local port for this rack's API (attach, clusters.json)
    disable: tuple[str, ...]
    tls_san: tuple[str, ...]
    node_labels: Labels
    ca: secretref.SecretRef | None = None   # the rack's cluster CA (firstboot/k3s_ca.py); None: k3s makes its own


@dataclass(frozen=True)
class Pi:
    name: str
    model: PiModel
    mac: str | None                # lower case, ':'-separated
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
    data: tuple[tuple[str, secretref.SecretRef], ...]   # sorted by key


@dataclass(frozen=True)
class SecretImport:
    """Every secret under source, each a stored Secret YAML, as Secrets of namespace (firstboot/secret_import.py)."""
    source: secretref.SecretPrefix
    namespace: str
    required: tuple[str, ...]      # stored names the rack needs there: checked at build and at apply
    exclude: tuple[str, ...]       # stored names left out (not imported, not checked)


@dataclass(frozen=True)
class PullSecret:
    """An image pull Secret listed in the imagePullSecrets of namespace's default ServiceAccount."""
    namespace: str
    secret: str


@dataclass(frozen=True)
class Migration:
    """A rack moving from the original team's jumphost to rackboot's: the old
    host keeps its own `metadata` service while the new one comes up, and
    `build.py router --rollback` points the host aliases back at it."""
    legacy_address: ipaddress.IPv4Address | None


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
    migration: Migration
    secret_imports: tuple[SecretImport, ...]
    image_pull_secrets: tuple[PullSecret, ...]
