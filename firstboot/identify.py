"""Identify: which rack this machine belongs to, and as what.

A jumphost image serves every rack, so the jumphost learns its rack at first
boot, from the first of these that says anything:

1. the kernel command line: rackboot.rack=NAME;
2. the NoCloud seed's meta-data (`rackboot-rack`, written by `build.py seed`);
3. its network, matched against every profile in the image: first the racks'
   explicit signals (jumphost MACs, router MAC: all given must match), then,
   only if no rack matched that way, an address in the subnet of a rack that
   gives no signals, with that rack's router as default gateway.

A Pi is found by its own serial or MAC among the profiles' Pis. The
rackboot.rack=NAME its boot files put on its kernel command line (the rack
whose TFTP tree or SD card it booted from) narrows the search to that rack,
and a Pi of another rack booted from them is an error. No match, or more
than one, is an error that says what was seen: never a guess.

What identify finds is an Identity, which carries the rack's profile: no
other step looks the rack up again.
"""

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import BadInput, RackbootError
from firstboot.layout import Role
from firstboot.profile import RackProfile

CMDLINE_KEY = "rackboot.rack"
INSTANCE_DATA = Path("/run/cloud-init/instance-data.json")


@dataclass(frozen=True)
class Identity:
    rack: str
    role: Role
    node: str            # node name: the jumphost's hostname or the Pi's name
    source: str          # what told us: "kernel command line", "seed", "network", "serial", "MAC"
    profile: RackProfile = field(repr=False, compare=False)   # the rack's

    def to_json(self) -> dict:
        return {"rack": self.rack, "role": str(self.role), "node": self.node, "source": self.source}


@dataclass(frozen=True)
class NetworkView:
    """What this machine sees of its network."""
    macs: frozenset[str]
    addresses: frozenset[ipaddress.IPv4Address]
    gateway: ipaddress.IPv4Address | None
    gateway_mac: str | None

    @classmethod
    def read(cls) -> "NetworkView":
        import netifaces  # only on the machine itself

        macs, addresses = set(), set()
        for name in netifaces.interfaces():
            if name == "lo":
                continue
            info = netifaces.ifaddresses(name)
            for link in info.get(netifaces.AF_LINK, []):
                if link.get("addr") and link["addr"] != "00:00:00:00:00:00":
                    macs.add(link["addr"].lower())
            for inet in info.get(netifaces.AF_INET, []):
                addresses.add(ipaddress.IPv4Address(inet["addr"]))
        default = netifaces.gateways().get("default", {}).get(netifaces.AF_INET)
        gateway = ipaddress.IPv4Address(default[0]) if default else None
        return cls(frozenset(macs), frozenset(addresses), gateway,
                   _neighbour_mac(gateway) if gateway else None)

    def describe(self) -> str:
        return (f"MACs {', '.join(sorted(self.macs)) or 'none'}; addresses "
                f"{', '.join(map(str, sorted(self.addresses))) or 'none'}; gateway "
                f"{self.gateway or 'none'}" + (f" ({self.gateway_mac})" if self.gateway_mac else ""))


def _neighbour_mac(address: ipaddress.IPv4Address) -> str | None:
    """The gateway's MAC from the kernel's ARP table (netifaces does not read it)."""
    try:
        lines = Path("/proc/net/arp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[0] == str(address) and fields[3] != "00:00:00:00:00:00":
            return fields[3].lower()
    return None


def rack_from_cmdline(cmdline: str) -> str | None:
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == CMDLINE_KEY:
            return value
    return None


def rack_from_seed(instance_data: Path = INSTANCE_DATA) -> str | None:
    try:
        data = json.loads(instance_data.read_text())
    except (OSError, ValueError):
        return None
    return (data.get("ds", {}).get("meta_data") or {}).get("rackboot-rack")


def _explicit_match(profile: RackProfile, view: NetworkView) -> bool:
    """The rack's identify signals (jumphost MACs, router MAC) all match."""
    ident = profile.jumphost.identify
    if not (ident.macs or ident.router_mac):
        return False
    if ident.macs and not view.macs & set(ident.macs):
        return False
    return not (ident.router_mac and view.gateway_mac != ident.router_mac)


def _subnet_match(profile: RackProfile, view: NetworkView) -> bool:
    """For racks without identify signals: an address in the subnet, and the
    rack router as default gateway."""
    ident = profile.jumphost.identify
    if ident.macs or ident.router_mac:
        return False
    in_subnet = any(a in profile.network.subnet for a in view.addresses)
    return in_subnet and view.gateway == profile.network.router


def profile_named(profiles: list[RackProfile], rack: str, source: str) -> RackProfile:
    """The profile of rack, which source (what named it, for the error) named."""
    for profile in profiles:
        if profile.rack == rack:
            return profile
    raise BadInput(f"the {source} names rack {rack!r}, which is not among this image's racks "
                   f"({', '.join(p.rack for p in profiles)})",
                   hint="rebuild the image with that rack's profile, or fix the name")


def identify_jumphost(profiles: list[RackProfile], cmdline: str, seed_rack: str | None,
                      view_reader=None) -> Identity:
    for source, rack in (("kernel command line", rack_from_cmdline(cmdline)), ("seed", seed_rack)):
        if rack:
            profile = profile_named(profiles, rack, source)
            return Identity(profile.rack, Role.JUMPHOST, profile.jumphost.hostname, source, profile)
    view = (view_reader or NetworkView.read)()
    # Explicit signals outrank the subnet rule: many racks share 192.168.1.0/24.
    matches = [p for p in profiles if _explicit_match(p, view)] or \
        [p for p in profiles if _subnet_match(p, view)]
    if len(matches) == 1:
        return Identity(matches[0].rack, Role.JUMPHOST, matches[0].jumphost.hostname, "network", matches[0])
    hint = (f"boot with {CMDLINE_KEY}=NAME on the kernel command line, attach the rack's seed "
            "(./build.py seed PROFILE), or add jumphost.identify (macs, router_mac) to the profile")
    if not matches:
        raise RackbootError(f"no rack matches this jumphost's network ({view.describe()})", hint)
    raise RackbootError(f"racks {', '.join(p.rack for p in matches)} all match this jumphost's "
                        f"network ({view.describe()}); refusing to guess", hint)


def pi_serial(cpuinfo: Path = Path("/proc/cpuinfo"),
              devicetree: Path = Path("/sys/firmware/devicetree/base/serial-number")) -> str | None:
    """The 8-hex-digit serial the Pi bootloader uses for its TFTP directory."""
    try:
        return devicetree.read_bytes().rstrip(b"\0").decode()[-8:].lower()
    except OSError:
        pass
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("Serial"):
                return line.split(":", 1)[1].strip()[-8:].lower()
    except OSError:
        pass
    return None


def _pis_matching(profiles: list[RackProfile], serial: str | None, macs: frozenset[str]) -> list:
    """(profile, pi, source) for each Pi with this serial, or else this MAC."""
    found = [(profile, pi, "serial") for profile in profiles for pi in profile.pis
             if serial and pi.serial == serial]
    found += [(profile, pi, "MAC") for profile in profiles for pi in profile.pis
              if pi.mac in macs and not (serial and pi.serial == serial)]
    return found


def identify_pi(profiles: list[RackProfile], serial: str | None, macs: frozenset[str],
                cmdline_rack: str | None = None) -> Identity:
    """cmdline_rack: the rack the Pi's boot files name (rackboot.rack=), if any."""
    candidates = profiles
    if cmdline_rack:
        candidates = [profile_named(profiles, cmdline_rack, "kernel command line")]
    found = _pis_matching(candidates, serial, macs)
    names = {(profile.rack, pi.name) for profile, pi, _ in found}
    if len(names) == 1:
        profile, pi, source = found[0]
        return Identity(profile.rack, Role.PI, pi.name, source, profile)
    seen = f"serial {serial or 'unknown'}, MACs {', '.join(sorted(macs)) or 'none'}"
    if not names and cmdline_rack:
        elsewhere = sorted({f"{profile.rack}/{pi.name}" for profile, pi, _ in _pis_matching(profiles, serial, macs)})
        raise RackbootError(f"this Pi ({seen}) booted rack {cmdline_rack}'s boot files (rackboot.rack= on its "
                            f"kernel command line) but is not one of its Pis"
                            + (f"; it is {', '.join(elsewhere)}" if elsewhere else ""),
                            hint="boot it from its own rack's jumphost or SD card, or move it in the profiles "
                                 "and rebuild")
    if not names:
        raise RackbootError(f"this Pi ({seen}) is in no rack profile of this image",
                            hint="add it to its rack's profile (pis: name, model, serial, mac) and rebuild")
    raise RackbootError(f"this Pi ({seen}) matches several Pis: "
                        + ", ".join(f"{rack}/{name}" for rack, name in sorted(names)),
                        hint="a serial or MAC may appear in only one rack's profile")
