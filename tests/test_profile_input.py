"""No input breaks what a profile renders: every bad input below is refused
with exactly the problems it states, as FILE: PATH: MESSAGE, exit status 2
and nothing written.

Each case is one rack over the valid rack of tests/profiles/broken/defaults.yaml,
broken in one way. Table cases are YAML text; the rest (non-UTF-8 bytes, a
FIFO, an alias bomb, deep nesting, symbolic links, odd file names) are made
in tmp_path when the test runs. Every case is checked through load_profiles,
and all of them together through the real command line (`check` and
`render -o`), so a traceback anywhere fails the test."""

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from firstboot.errors import ProfileError
from firstboot.profile import SCHEMA_PATH, load_profiles
from firstboot.profile.labels import KUBELET_LABELS
from firstboot.profile.schema import anchored_at_end, validator
from firstboot.profile.yaml_input import MAX_DEPTH, MAX_FILE_BYTES

BASE_DEFAULTS = Path(__file__).parent / "profiles" / "broken" / "defaults.yaml"
PI = 'name: pi-1, model: pi4, serial: "00000001", mac: "dc:a6:32:00:00:01"'
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk3ZHJhY2tib290ZXhhbXBsZWtleWRvbm90dXNl"
SECRET = 'name: s, data: {k: "sm://rackboot-test/x"}'
DNS_LABEL = "is not a DNS label (a-z, 0-9 and '-', at most 63)"
MAC = "is not a MAC address"
SRV = "is not a directory under /srv/ (path components of letters, digits, '.', '_' and '-')"
LABEL_KEY = "is not a Kubernetes label key"
LABEL_VALUE = "is not a Kubernetes label value (at most 63 of A-Z, a-z, 0-9, '-', '_', '.')"
SSH = "is not an OpenSSH public key line (type, base64 key, optional comment without control characters)"
SECRET_TYPE = "is not a Secret type (Opaque, or a qualified name such as kubernetes.io/tls)"
MANIFEST = "is not a relative path of letters, digits, '.', '_', '-' and '/'"
DESCRIPTION = "is not one line of printable text (no control characters)"
NO_SPACE_REF = "a secret reference holds no spaces or control characters"
FILE_REF = "file:// path components are letters, digits, '.', '_' and '-' (no '.' or '..' components)"
KUBELET = ("kubelet refuses node labels under kubernetes.io and k8s.io except kubelet.kubernetes.io/*, "
           "node.kubernetes.io/* and " + ", ".join(sorted(KUBELET_LABELS)))
NODE_RESTRICTION = ("a node cannot give itself node-restriction.kubernetes.io/ labels (NodeRestriction): "
                    "rackboot's agent sets those through the API")
NAME = ("is not a profile file name: letters, digits, '.', '_' and '-', starting with a letter or digit, "
        "ending in .yaml")


@dataclass(frozen=True)
class Case:
    id: str
    rack: str | None = None                    # the profile's text after `rack: r`, or all of it from `rack:`
    expect: tuple[str, ...] = ()               # "PATH: MESSAGE" in the profile, or in defaults.yaml with "defaults> "
    setup: Callable[[Path], Path] | None = None  # makes the case in a directory, returns the profile's path
    lines: Callable[[Path], list[str]] | None = None  # whole expected lines, when they name other files
    defaults: str | None = field(default=None)  # replaces defaults.yaml's text


def table(id, rack, *expect, defaults=None):
    return Case(id, rack, tuple(expect), defaults=defaults)


# ---------------------------------------------------------------- one trailing newline, per patterned field

NEWLINE = [
    table("nl-rack", 'rack: "r\\n"', r"rack: 'r\n' " + DNS_LABEL),
    table("nl-hostname", 'jumphost: {hostname: "jh\\n"}', r"jumphost.hostname: 'jh\n' " + DNS_LABEL),
    table("nl-uplink", 'jumphost: {uplink: "eth0\\n"}',
          r"jumphost.uplink: 'eth0\n' is not an interface name (cloud-init matches names exactly: no globs)"),
    table("nl-ssh-key", f'jumphost: {{ssh_authorized_keys: ["{KEY} me\\n"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} me\\n' {SSH}"),
    table("nl-ssh-key-no-comment", f'jumphost: {{ssh_authorized_keys: ["{KEY}\\n"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY}\\n' {SSH}"),
    table("nl-identify-mac", 'jumphost: {identify: {macs: ["dc:a6:32:00:01:01\\n"]}}',
          r"jumphost.identify.macs[0]: 'dc:a6:32:00:01:01\n' " + MAC),
    table("nl-router-mac", 'jumphost: {identify: {router_mac: "dc:a6:32:00:01:01\\n"}}',
          r"jumphost.identify.router_mac: 'dc:a6:32:00:01:01\n' " + MAC),
    table("nl-k3s-version", 'k3s: {version: "v1.31.4+k3s1\\n"}',
          r"k3s.version: 'v1.31.4+k3s1\n' is not a k3s release tag such as v1.31.4+k3s1"),
    table("nl-tls-san", 'k3s: {tls_san: ["rack\\n"]}', r"k3s.tls_san[0]: 'rack\n' is not a DNS name or an address"),
    table("nl-node-label-key", 'k3s: {node_labels: {"team\\n": a}}', r"k3s.node_labels: 'team\n' " + LABEL_KEY),
    table("nl-node-label-value", 'k3s: {node_labels: {team: "a\\n"}}',
          r"k3s.node_labels.team: 'a\n' " + LABEL_VALUE),
    table("nl-pi-name", 'pis: [{name: "pi-1\\n", model: pi4, serial: "00000001"}]', r"pis[0].name: 'pi-1\n' " + DNS_LABEL),
    table("nl-pi-mac", 'pis: [{name: pi-1, model: pi4, serial: "00000001", mac: "dc:a6:32:00:00:01\\n"}]',
          r"pis[0].mac: 'dc:a6:32:00:00:01\n' " + MAC),
    table("nl-pi-serial", 'pis: [{name: pi-1, model: pi4, serial: "00000001\\n", mac: "dc:a6:32:00:00:01"}]',
          r"pis[0].serial: '00000001\n' is not a Pi serial number (8 lower-case hex digits, as in /proc/cpuinfo "
          "without the leading 10000000)"),
    table("nl-pi-label-key", f'pis: [{{{PI}, labels: {{"shelf\\n": a}}}}]', r"pis[0].labels: 'shelf\n' " + LABEL_KEY),
    table("nl-pi-label-value", f'pis: [{{{PI}, labels: {{shelf: "a\\n"}}}}]',
          r"pis[0].labels.shelf: 'a\n' " + LABEL_VALUE),
    table("nl-domain", 'network: {domain: "lab\\n"}', r"network.domain: 'lab\n' is not a DNS name"),
    table("nl-tftp-root", 'netboot: {tftp_root: "/srv/tftp\\n"}', r"netboot.tftp_root: '/srv/tftp\n' " + SRV),
    table("nl-nfs-root", 'netboot: {nfs_root: "/srv/root\\n"}', r"netboot.nfs_root: '/srv/root\n' " + SRV),
    table("nl-manifest", 'manifests: ["kube\\n"]', r"manifests[0]: 'kube\n' " + MANIFEST),
    table("nl-secret-name", 'secrets: [{name: "s\\n", data: {k: "sm://rackboot-test/x"}}]',
          r"secrets[0].name: 's\n' is not a DNS name"),
    table("nl-secret-namespace", f'secrets: [{{{SECRET}, namespace: "ns\\n"}}]',
          r"secrets[0].namespace: 'ns\n' " + DNS_LABEL),
    table("nl-secret-type", f'secrets: [{{{SECRET}, type: "Opaque\\n"}}]',
          r"secrets[0].type: 'Opaque\n' " + SECRET_TYPE),
    table("nl-secret-data-key", 'secrets: [{name: s, data: {"k\\n": "sm://rackboot-test/x"}}]',
          r"secrets[0].data: 'k\n' does not match '^[-._A-Za-z0-9]+$'"),
    table("nl-secret-ref-key", 'secrets: [{name: s, data: {k: {ref: "sm://rackboot-test/x", key: "k\\n"}}}]',
          "secrets[0].data.k: is not a secret reference: a string such as sm://PROJECT/NAME, or {ref: ..., key: ...}"),
    table("nl-host-alias", 'host_aliases: ["metadata\\n"]', r"host_aliases[0]: 'metadata\n' " + DNS_LABEL),
    table("nl-description", 'description: "rack\\n"', r"description: 'rack\n' " + DESCRIPTION),
    table("nl-subnet", 'network: {subnet: "10.1.0.0/24\\n"}',
          r"network.subnet: '10.1.0.0/24\n' is not an IPv4 network such as 192.168.1.0/24"),
    table("nl-router", 'network: {router: "10.1.0.1\\n"}', r"network.router: '10.1.0.1\n' is not an IPv4 address"),
    table("nl-dns", 'network: {dns: ["10.1.0.1\\n"]}', r"network.dns[0]: '10.1.0.1\n' is not an IPv4 address"),
    table("nl-jumphost-address", 'jumphost: {address: "10.1.0.8\\n"}',
          r"jumphost.address: '10.1.0.8\n' is not an IPv4 address"),
    table("nl-pi-address", f'pis: [{{{PI}, address: "10.1.0.20\\n"}}]',
          r"pis[0].address: '10.1.0.20\n' is not an IPv4 address"),
    table("nl-dhcp-range", 'netboot: {dhcp: full, dhcp_range: {start: "10.1.0.100\\n", end: 10.1.0.200}}',
          r"netboot.dhcp_range.start: '10.1.0.100\n' is not an IPv4 address"),
    table("nl-k3s-token", 'k3s: {token: "sm://rackboot-test/k3s-token\\n"}',
          r"k3s.token: 'sm://rackboot-test/k3s-token\n': " + NO_SPACE_REF),
    table("nl-secret-ref", 'secrets: [{name: s, data: {k: "sm://rackboot-test/x\\n"}}]',
          r"secrets[0].data.k: 'sm://rackboot-test/x\n': " + NO_SPACE_REF),
    table("nl-dhcp-mode", 'netboot: {dhcp: "proxy\\n"}', r"netboot.dhcp: 'proxy\n' is not one of proxy, full"),
    table("nl-pi-model", 'pis: [{name: pi-1, model: "pi4\\n", serial: "00000001"}]',
          r"pis[0].model: 'pi4\n' is not one of pi4, pi5"),
    table("nl-boot-dir-by", 'netboot: {boot_dir_by: "mac\\n"}', r"netboot.boot_dir_by: 'mac\n' is not one of serial, mac"),
    table("nl-rancher-storage", 'netboot: {rancher_storage: "sd\\n"}',
          r"netboot.rancher_storage: 'sd\n' is not one of tmpfs, sd"),
    table("nl-disable", 'k3s: {disable: ["traefik\\n"]}',
          r"k3s.disable[0]: 'traefik\n' is not one of traefik, servicelb, metrics-server, local-storage, coredns"),
]

# ---------------------------------------------------------------- integers

PORTS = [
    table("port-float", "k3s: {api_port: 6442.0}", "k3s.api_port: expected an integer, got a number"),
    table("port-true", "k3s: {api_port: true}", "k3s.api_port: expected an integer, got true or false"),
    table("port-string", 'k3s: {api_port: "6443"}', "k3s.api_port: expected an integer, got a string"),
    table("port-float-exp", "k3s: {api_port: 6.443e+3}", "k3s.api_port: expected an integer, got a number"),
    table("port-inf", "k3s: {api_port: .inf}", "k3s.api_port: expected an integer, got a number",
          "k3s.api_port: inf is greater than the maximum of 65535"),
    table("port-nan", "k3s: {api_port: .nan}", "k3s.api_port: expected an integer, got a number"),
    table("port-zero", "k3s: {api_port: 0}", "k3s.api_port: 0 is less than the minimum of 1"),
    table("port-too-big", "k3s: {api_port: 65536}", "k3s.api_port: 65536 is greater than the maximum of 65535"),
    table("join-port-float", "netboot: {join_port: 6442.0}", "netboot.join_port: expected an integer, got a number"),
    table("join-port-false", "netboot: {join_port: false}", "netboot.join_port: expected an integer, got true or false"),
    table("join-port-negative", "netboot: {join_port: -1}", "netboot.join_port: -1 is less than the minimum of 1"),
    table("join-port-null", "netboot: {join_port: null}", "netboot.join_port: expected an integer, got nothing"),
]

# ---------------------------------------------------------------- YAML structure

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))

STRUCTURE = [
    table("alias-bomb", "\n" + BOMB, ":3:4: YAML anchors (&a) are not allowed in rack profiles"),
    table("alias", "\nhost_aliases: [metadata]\ndescription: *x\n",
          ":4:14: YAML aliases (*x) are not allowed in rack profiles: write the value out"),
    table("anchor", "\nhost_aliases: &names [metadata]\n", ":3:15: YAML anchors (&names) are not allowed in rack profiles"),
    table("merge-key", "\njumphost: {<<: {uplink: eth1}}\n",
          "jumphost: key '<<' (line 3) is not a string: YAML read it as a merge key (<<) (put it in quotes)"),
    table("int-key-top", "\n1: x\n", "(top level): key '1' (line 3) is not a string: YAML read it as an integer (put it in quotes)"),
    table("int-key-label", "\nk3s: {node_labels: {7: a}}\n",
          "k3s.node_labels: key '7' (line 3) is not a string: YAML read it as an integer (put it in quotes)"),
    table("float-key", "\npis: [{1.5: x}]\n",
          "pis[0]: key '1.5' (line 3) is not a string: YAML read it as a number (put it in quotes)"),
    table("bool-key", "\nnetboot: {true: x}\n",
          "netboot: key 'true' (line 3) is not a string: YAML read it as true or false (put it in quotes)"),
    table("null-key", "\nnetboot: {~: x}\n",
          "netboot: key '~' (line 3) is not a string: YAML read it as null (put it in quotes)"),
    table("empty-key", "\nnetboot:\n  ?\n  : x\n",
          "netboot: key '' (line 4) is not a string: YAML read it as null (put it in quotes)"),
    table("date-key", "\nk3s: {node_labels: {2024-01-01: a}}\n",
          "k3s.node_labels: key '2024-01-01' (line 3) is not a string: YAML read it as a date (put it in quotes)"),
    table("complex-key-list", "\n? [a, b]\n: x\n", "(top level): key at line 3 is a list: keys must be strings"),
    table("complex-key-map", "\njumphost:\n  ? {a: 1}\n  : x\n", "jumphost: key at line 4 is a mapping: keys must be strings"),
    table("two-bad-keys", "\nk3s: {node_labels: {1: a, null: b}}\n",
          "k3s.node_labels: key '1' (line 3) is not a string: YAML read it as an integer (put it in quotes)",
          "k3s.node_labels: key 'null' (line 3) is not a string: YAML read it as null (put it in quotes)"),
    table("nul-char", "\ndescription: a\x00b\n",
          ":3:15: character U+0000 is not allowed in YAML (write it as an escape in a double-quoted string)"),
    table("escape-char", "\ndescription: a\x1b[2Jb\n",
          ":3:15: character U+001B is not allowed in YAML (write it as an escape in a double-quoted string)"),
    table("two-documents", "\n---\nrack: other\n", ":3:1: expected a single document in the stream, but found another document"),
    table("python-tag", "\ndescription: !!python/object:os.system [ls]\n",
          ":3:14: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
    table("binary-value", "\ndescription: !!binary aGVsbG8=\n", "description: expected a string, got bytes"),
    table("date-value", "\ndescription: 2024-01-01\n", "description: expected a string, got date"),
    table("defaults-int-key", "", "defaults> (top level): key '3' (line 11) is not a string: YAML read it as an "
          "integer (put it in quotes)", defaults=BASE_DEFAULTS.read_text() + "3: x\n"),
    table("defaults-alias", "", "defaults> :11:12: YAML anchors (&n) are not allowed in rack profiles",
          defaults=BASE_DEFAULTS.read_text() + "manifests: &n []\n"),
]

# ---------------------------------------------------------------- netboot roots

ROOTS = [table(f"root-{i}", f"netboot: {{{key}: {value}}}", f"netboot.{key}: {shown} {SRV}")
         for i, (key, value, shown) in enumerate([
             ("nfs_root", "/", "'/'"), ("nfs_root", "/etc", "'/etc'"), ("tftp_root", "/bin", "'/bin'"),
             ("nfs_root", "/srv", "'/srv'"), ("tftp_root", "/srv/", "'/srv/'"),
             ("nfs_root", '"/srv/a,b"', "'/srv/a,b'"), ("nfs_root", '"/srv/a b"', "'/srv/a b'"),
             ("tftp_root", "/srv//a", "'/srv//a'"), ("nfs_root", "/srv/a/", "'/srv/a/'"),
             ("nfs_root", '"/srv/x(rw,no_root_squash)"', "'/srv/x(rw,no_root_squash)'"),
             ("nfs_root", "srv/a", "'srv/a'"), ("nfs_root", '"/srv/a:b"', "'/srv/a:b'"),
             ("tftp_root", "/srv/räck", "'/srv/räck'"), ("nfs_root", '"/srv/a\\tb"', r"'/srv/a\tb'"),
             ("tftp_root", "/srv/" + "a" * 200, "'/srv/" + "a" * 200 + "'"),
             ("nfs_root", "/srvx/a", "'/srvx/a'")])]
ROOTS[-2] = table("root-too-long", "netboot: {tftp_root: /srv/" + "a" * 200 + "}",
                  "netboot.tftp_root: '/srv/" + "a" * 200 + "' is too long")
ROOTS += [
    table("root-dotdot", "netboot: {nfs_root: /srv/../etc}", "netboot.nfs_root: '/srv/../etc' has a '.' or '..' component"),
    table("root-dot", "netboot: {tftp_root: /srv/./x}", "netboot.tftp_root: '/srv/./x' has a '.' or '..' component"),
    table("roots-equal", "netboot: {tftp_root: /srv/boot, nfs_root: /srv/boot}",
          "netboot.nfs_root: '/srv/boot' is also netboot.tftp_root: the two must differ"),
    table("roots-equal-default", "netboot: {nfs_root: /srv/rackboot/tftp}",
          "netboot.nfs_root: '/srv/rackboot/tftp' is also netboot.tftp_root: the two must differ"),
    table("nfs-in-tftp", "netboot: {tftp_root: /srv/boot, nfs_root: /srv/boot/root}",
          "netboot.nfs_root: '/srv/boot/root' is inside netboot.tftp_root '/srv/boot'"),
    table("tftp-in-nfs", "netboot: {tftp_root: /srv/rackboot/pi-root/boot}",
          "netboot.tftp_root: '/srv/rackboot/pi-root/boot' is inside netboot.nfs_root '/srv/rackboot/pi-root'"),
    table("root-not-string", "netboot: {nfs_root: [/srv/a]}", "netboot.nfs_root: expected a string, got a list"),
]

# ---------------------------------------------------------------- labels kubelet or NodeRestriction refuses

LABELS = [table(f"label-{key.replace('/', '-').replace('.', '-')}", f"k3s: {{node_labels: {{{key}: x}}}}",
                f"k3s.node_labels.{key}: {message}")
          for key, message in [
              ("node-restriction.kubernetes.io/rack-secrets", NODE_RESTRICTION),
              ("example.node-restriction.kubernetes.io/a", NODE_RESTRICTION),
              ("kubernetes.io/role", KUBELET), ("node-role.kubernetes.io/worker", KUBELET),
              ("k8s.io/x", KUBELET), ("foo.k8s.io/x", KUBELET), ("beta.kubernetes.io/fluentd", KUBELET),
              ("topology.kubernetes.io/rack", KUBELET), ("rackboot.dev/role",
               "the rackboot.dev/ prefix is reserved: rackboot sets rack, role and model itself")]]
LABELS += [
    table("pi-label-node-restriction", f"pis: [{{{PI}, labels: {{node-restriction.kubernetes.io/x: y}}}}]",
          f"pis[0].labels.node-restriction.kubernetes.io/x: {NODE_RESTRICTION}"),
    table("pi-label-kubernetes", f"pis: [{{{PI}, labels: {{kubernetes.io/x: y}}}}]",
          f"pis[0].labels.kubernetes.io/x: {KUBELET}"),
    table("label-key-space", 'k3s: {node_labels: {"a b": x}}', "k3s.node_labels: 'a b' " + LABEL_KEY),
    table("label-value-comma", 'k3s: {node_labels: {a: "x,y"}}', "k3s.node_labels.a: 'x,y' " + LABEL_VALUE),
    table("label-value-equals", 'k3s: {node_labels: {a: "x=y"}}', "k3s.node_labels.a: 'x=y' " + LABEL_VALUE),
    table("label-value-number", "k3s: {node_labels: {a: 1}}", "k3s.node_labels.a: expected a string, got an integer "
          "(YAML read it as a number: put it in quotes)"),
    table("labels-list", "k3s: {node_labels: [a]}", "k3s.node_labels: expected a mapping, got a list"),
]

# ---------------------------------------------------------------- other free-form strings

STRINGS = [
    table("secret-type-space", f"secrets: [{{{SECRET}, type: my type}}]", "secrets[0].type: 'my type' " + SECRET_TYPE),
    table("secret-type-two-slashes", f"secrets: [{{{SECRET}, type: a/b/c}}]", "secrets[0].type: 'a/b/c' " + SECRET_TYPE),
    table("secret-type-empty", f'secrets: [{{{SECRET}, type: ""}}]', "secrets[0].type: '' " + SECRET_TYPE),
    table("secret-type-prefix-only", f"secrets: [{{{SECRET}, type: kubernetes.io/}}]",
          "secrets[0].type: 'kubernetes.io/' " + SECRET_TYPE),
    table("secret-type-quote", f"secrets: [{{{SECRET}, type: \"a'b\"}}]", "secrets[0].type: \"a'b\" " + SECRET_TYPE),
    table("ssh-comment-bell", f'jumphost: {{ssh_authorized_keys: ["{KEY} a\\ab"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} a\\x07b' {SSH}"),
    table("ssh-comment-tab", f'jumphost: {{ssh_authorized_keys: ["{KEY} a\\tb"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} a\\tb' {SSH}"),
    table("ssh-comment-escape", f'jumphost: {{ssh_authorized_keys: ["{KEY} \\e[31mred"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} \\x1b[31mred' {SSH}"),
    table("ssh-comment-line-separator", f'jumphost: {{ssh_authorized_keys: ["{KEY} a\\Lruncmd"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} a\\u2028runcmd' {SSH}"),
    table("ssh-comment-next-line", f'jumphost: {{ssh_authorized_keys: ["{KEY} a\\Nb"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} a\\x85b' {SSH}"),
    table("ssh-key-newline-inside", f'jumphost: {{ssh_authorized_keys: ["{KEY} a\\nruncmd: [x]"]}}',
          f"jumphost.ssh_authorized_keys[0]: '{KEY} a\\nruncmd: [x]' {SSH}"),
    table("ref-space-inside", 'k3s: {token: "file:///etc/a b"}', "k3s.token: 'file:///etc/a b': " + NO_SPACE_REF),
    table("ref-leading-space", 'k3s: {token: " sm://rackboot-test/x"}', "k3s.token: ' sm://rackboot-test/x': " + NO_SPACE_REF),
    table("ref-tab", 'k3s: {token: "sm://rackboot-test/x\\t"}', r"k3s.token: 'sm://rackboot-test/x\t': " + NO_SPACE_REF),
    table("ref-nul", 'k3s: {token: "file:///etc/x\\0"}', r"k3s.token: 'file:///etc/x\x00': " + NO_SPACE_REF),
    table("ref-zero-width", 'k3s: {token: "sm://rackboot-test/x\\u200b"}',
          r"k3s.token: 'sm://rackboot-test/x\u200b': " + NO_SPACE_REF),
    table("ref-file-dotdot", 'k3s: {token: "file:///etc/rackboot/../shadow"}',
          "k3s.token: 'file:///etc/rackboot/../shadow': " + FILE_REF),
    table("ref-file-comma", 'k3s: {token: "file:///etc/a,b"}', "k3s.token: 'file:///etc/a,b': " + FILE_REF),
    table("ref-file-double-slash", 'k3s: {token: "file:////etc//x"}', "k3s.token: 'file:////etc//x': " + FILE_REF),
    table("ref-file-quote", "k3s: {token: \"file:///etc/a'b\"}", "k3s.token: \"file:///etc/a'b\": " + FILE_REF),
    table("secret-ref-space", 'secrets: [{name: s, data: {k: {ref: "sm://rackboot-test/x y", key: k}}}]',
          "secrets[0].data.k: 'sm://rackboot-test/x y': " + NO_SPACE_REF),
    table("description-escape", 'description: "\\e[2Jcleared"', r"description: '\x1b[2Jcleared' " + DESCRIPTION),
    table("description-two-lines", 'description: "one\\ntwo"', r"description: 'one\ntwo' " + DESCRIPTION),
    table("description-nul", 'description: "a\\0"', r"description: 'a\x00' " + DESCRIPTION),
    table("description-too-long", "description: " + "x" * 1001, f"description: '{'x' * 1001}' is too long"),
    table("description-list", "description: [a]", "description: expected a string, got a list"),
]

# ---------------------------------------------------------------- manifests

MANIFESTS = [
    table("manifest-parent", "manifests: [../outside]",
          "manifests[0]: '../outside' is outside the profile's directory (manifests are paths inside it, without '..')"),
    table("manifest-parent-inside", "manifests: [kube/../../x]",
          "manifests[0]: 'kube/../../x' is outside the profile's directory (manifests are paths inside it, without '..')"),
    table("manifest-absolute", "manifests: [/etc/passwd]", "manifests[0]: '/etc/passwd' " + MANIFEST),
    table("manifest-double-slash", "manifests: [kube//x]", "manifests[0]: 'kube//x' " + MANIFEST),
    table("manifest-space", 'manifests: ["kube x"]', "manifests[0]: 'kube x' " + MANIFEST),
    table("manifest-empty", 'manifests: [""]', "manifests[0]: '' " + MANIFEST),
    table("manifest-itself", "manifests: [.]",
          "manifests[0]: '.' is the profile's directory itself (name a directory of manifests in it)"),
    table("manifest-not-list", "manifests: kube", "manifests: expected a list, got a string"),
]


# ---------------------------------------------------------------- cases made on disk


def _dir_case(make: Callable[[Path], None], entry: str):
    def setup(directory: Path) -> Path:
        (directory / "kube").mkdir()
        make(directory)
        (directory / "rack.yaml").write_text(f"rack: r\nmanifests: [{entry}]\n")
        return directory / "rack.yaml"
    return setup


def _write(name: str, data: bytes, prefix: bytes = b"rack: r\n"):
    def setup(directory: Path) -> Path:
        (directory / name).write_bytes(prefix + data)
        return directory / name
    return setup


def _fifo(directory: Path) -> Path:
    os.mkfifo(directory / "rack.yaml")
    return directory / "rack.yaml"


def _fifo_defaults(directory: Path) -> Path:
    (directory / "defaults.yaml").unlink()
    os.mkfifo(directory / "defaults.yaml")
    (directory / "rack.yaml").write_text("rack: r\n")
    return directory / "rack.yaml"


def _directory_profile(directory: Path) -> Path:
    """A directory that a directory argument's *.yaml finds."""
    (directory / "rack.yaml").mkdir()
    return directory


def _symlink_to_fifo(directory: Path) -> Path:
    os.mkfifo(directory / "pipe")
    (directory / "rack.yaml").symlink_to("pipe")
    return directory / "rack.yaml"


def _outside(directory: Path) -> None:
    (directory.parent / f"{directory.name}-outside.yaml").write_text("kind: ConfigMap\n")
    (directory / "kube" / "x.yaml").symlink_to(directory.parent / f"{directory.name}-outside.yaml")


def _fifo_manifest(directory: Path) -> None:
    os.mkfifo(directory / "kube" / "x.yaml")


def _symlinked_dir(directory: Path) -> None:
    (directory / "real").mkdir()
    (directory / "real" / "a.yaml").write_text("kind: ConfigMap\n")
    (directory / "kube" / "linked").symlink_to(directory / "real")


def _bad_manifest_name(directory: Path) -> None:
    (directory / "kube" / "a\nb.yaml").write_text("kind: ConfigMap\n")


def _subdir_named_yaml(directory: Path) -> None:
    (directory / "kube" / "sub.yaml").mkdir()


def _symlinked_entry(directory: Path) -> None:
    (directory / "kube" / "a.yaml").write_text("kind: ConfigMap\n")
    (directory / "link.yaml").symlink_to(directory / "kube" / "a.yaml")


def _fifo_entry(directory: Path) -> None:
    os.mkfifo(directory / "pipe.yaml")


def _named(name: str):
    def setup(directory: Path) -> Path:
        (directory / name).write_text("rack: r\n")
        return directory / name
    return setup


ON_DISK = [
    Case("latin-1", setup=_write("rack.yaml", "description: caf\xe9\n".encode("latin-1")),
         expect=(": is not UTF-8 text (byte 0xe9 at offset 24)",)),
    Case("utf-16", setup=_write("rack.yaml", "rack: r\n".encode("utf-16"), prefix=b""),
         expect=(": is not UTF-8 text (byte 0xff at offset 0)",)),
    Case("fifo", setup=_fifo, expect=(": is a FIFO, not a regular file",)),
    Case("fifo-defaults", setup=_fifo_defaults, lines=lambda d: [f"{d}/defaults.yaml: is a FIFO, not a regular file"]),
    Case("directory-profile", setup=_directory_profile,
         lines=lambda d: [f"{d}/rack.yaml: is a directory, not a regular file"]),
    Case("symlink-to-fifo", setup=_symlink_to_fifo, expect=(": is a FIFO, not a regular file",)),
    Case("too-big", setup=_write("rack.yaml", b"#" * MAX_FILE_BYTES + b"\n"),
         expect=(f": is {MAX_FILE_BYTES + 9} bytes; a rack profile is at most {MAX_FILE_BYTES} bytes",)),
    Case("deep-flow", setup=_write("rack.yaml", b"description: " + b"[" * 10000 + b"]" * 10000 + b"\n"),
         expect=(f":2:{14 + MAX_DEPTH - 1}: nested deeper than {MAX_DEPTH} levels",)),
    Case("deep-block", setup=_write("rack.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(40)).encode()),
         expect=(f":{MAX_DEPTH + 1}:{2 * MAX_DEPTH - 1}: nested deeper than {MAX_DEPTH} levels",)),
    Case("deep-unclosed", setup=_write("rack.yaml", b"description: " + b"[" * 100000),
         expect=(f":2:{14 + MAX_DEPTH - 1}: nested deeper than {MAX_DEPTH} levels",)),
    Case("manifest-symlink-outside", setup=_dir_case(_outside, "kube"),
         lines=lambda d: [f"{d}/rack.yaml: manifests[0]: 'x.yaml' in 'kube' is a symbolic link "
                          "(manifests must be regular files)"]),
    Case("manifest-fifo-in-dir", setup=_dir_case(_fifo_manifest, "kube"),
         expect=(": manifests[0]: 'x.yaml' in 'kube' is not a regular file",)),
    Case("manifest-symlinked-dir", setup=_dir_case(_symlinked_dir, "kube/linked"),
         lines=lambda d: [f"{d}/rack.yaml: manifests[0]: 'kube/linked': {d.resolve()}/kube/linked is a symbolic "
                          "link (manifests must be regular files inside the profile's directory)"]),
    Case("manifest-bad-name-in-dir", setup=_dir_case(_bad_manifest_name, "kube"),
         expect=(": manifests[0]: 'a\\nb.yaml' in 'kube' is not a manifest file name (letters, digits, '.', '_' "
                 "and '-')",)),
    Case("manifest-subdir-named-yaml", setup=_dir_case(_subdir_named_yaml, "kube"),
         expect=(": manifests[0]: 'sub.yaml' in 'kube' is not a regular file",)),
    Case("manifest-symlink-entry", setup=_dir_case(_symlinked_entry, "link.yaml"),
         lines=lambda d: [f"{d}/rack.yaml: manifests[0]: 'link.yaml': {d.resolve()}/link.yaml is a symbolic link "
                          "(manifests must be regular files inside the profile's directory)"]),
    Case("manifest-fifo-entry", setup=_dir_case(_fifo_entry, "pipe.yaml"),
         expect=(": manifests[0]: 'pipe.yaml' is not a regular file or a directory",)),
    Case("name-newline-runcmd", setup=_named("x\nruncmd: [reboot]\n.yaml"),
         lines=lambda d: [f"{d}/x\\nruncmd: [reboot]\\n.yaml: (file name): 'x\\nruncmd: [reboot]\\n.yaml' {NAME}"]),
    Case("name-space", setup=_named("rack 4.yaml"), lines=lambda d: [f"{d}/rack 4.yaml: (file name): 'rack 4.yaml' {NAME}"]),
    Case("name-leading-dash", setup=_named("-rack.yaml"), lines=lambda d: [f"{d}/-rack.yaml: (file name): '-rack.yaml' {NAME}"]),
    Case("name-hidden", setup=_named(".rack.yaml"), lines=lambda d: [f"{d}/.rack.yaml: (file name): '.rack.yaml' {NAME}"]),
    Case("name-yml", setup=_named("rack.yml"), lines=lambda d: [f"{d}/rack.yml: (file name): 'rack.yml' {NAME}"]),
    Case("name-shell", setup=_named("$(reboot).yaml"),
         lines=lambda d: [f"{d}/$(reboot).yaml: (file name): '$(reboot).yaml' {NAME}"]),
    Case("name-non-ascii", setup=_named("räck.yaml"), lines=lambda d: [f"{d}/räck.yaml: (file name): 'räck.yaml' {NAME}"]),
    Case("name-quote", setup=_named("it's.yaml"), lines=lambda d: [f"{d}/it's.yaml: (file name): \"it's.yaml\" {NAME}"]),
]

# ---------------------------------------------------------------- wrong shapes (no traceback anywhere)

SHAPES = [
    table("jumphost-string", "jumphost: jh", "jumphost: expected a mapping, got a string"),
    table("pis-mapping", "pis: {a: 1}", "pis: expected a list, got a mapping"),
    table("pi-number", "pis: [1]", "pis[0]: expected a mapping, got an integer"),
    table("pi-null", "pis: [null]", "pis[0]: expected a mapping, got nothing"),
    table("netboot-list", "netboot: [full]", "netboot: expected a mapping, got a list"),
    table("dhcp-range-string", "netboot: {dhcp: full, dhcp_range: 10.1.0.1-10.1.0.9}",
          "netboot.dhcp_range: expected a mapping, got a string"),
    table("secret-data-list", "secrets: [{name: s, data: [a]}]", "secrets[0].data: expected a mapping, got a list"),
    table("token-number", "k3s: {token: 5}",
          "k3s.token: 5 is not a secret reference: a string such as sm://PROJECT/NAME, or {ref: ..., key: ...}"),
    table("identify-macs-string", 'jumphost: {identify: {macs: "dc:a6:32:00:01:01"}}',
          "jumphost.identify.macs: expected a list, got a string"),
    table("subnet-number", "network: {subnet: 10}",
          "network.subnet: expected a string, got an integer (YAML read it as a number: put it in quotes)"),
    table("secrets-string", "secrets: s", "secrets: expected a list, got a string"),
    table("host-aliases-null-item", "host_aliases: [null]", "host_aliases[0]: expected a string, got nothing"),
]

# ---------------------------------------------------------------- names YAML would read as something else

YAML_NAMES = [table(f"yaml-name-{i}", text, f"{path}: {value!r} would be read as {kind} in the YAML files "
                    "rackboot writes (cloud-init, k3s): choose another name")
              for i, (text, path, value, kind) in enumerate([
                  ('rack: "null"', "rack", "null", "null"),
                  ('jumphost: {hostname: "0"}', "jumphost.hostname", "0", "an integer"),
                  ('jumphost: {uplink: "on"}', "jumphost.uplink", "on", "true or false"),
                  ('network: {domain: "1.5"}', "network.domain", "1.5", "a number"),
                  ('pis: [{name: "2024-01-01", model: pi4, serial: "00000001"}]', "pis[0].name", "2024-01-01",
                   "a date"),
                  ('jumphost: {hostname: "0x1f"}', "jumphost.hostname", "0x1f", "an integer"),
                  ('jumphost: {hostname: "y"}', "jumphost.hostname", "y", "true or false"),
                  ('pis: [{name: "1e3", model: pi4, serial: "00000001"}]', "pis[0].name", "1e3", "a number"),
                  ('rack: "0o17"', "rack", "0o17", "a number"),
                  ('network: {domain: "1.5e3"}', "network.domain", "1.5e3", "a number")])]

CASES = YAML_NAMES + NEWLINE + PORTS + STRUCTURE + ROOTS + LABELS + STRINGS + MANIFESTS + ON_DISK + SHAPES


def make(case: Case, directory: Path) -> tuple[Path, list[str]]:
    """Write the case into its own directory; return the profile and the lines it must produce."""
    directory.mkdir(parents=True)
    (directory / "defaults.yaml").write_text(case.defaults if case.defaults is not None else BASE_DEFAULTS.read_text())
    if case.setup:
        profile = case.setup(directory)
    else:
        profile = directory / "rack.yaml"
        profile.write_text(case.rack if case.rack.startswith("rack:") else f"rack: r\n{case.rack}\n")
    if case.lines:
        return profile, case.lines(directory)
    lines = []
    for text in case.expect:
        if text.startswith("defaults> "):
            where, text = directory / "defaults.yaml", text.removeprefix("defaults> ")
        else:
            where = profile
        lines.append(f"{where}{text}" if text.startswith(":") else f"{where}: {text}")
    return profile, lines


def test_enough_cases():
    """Issue 11 asks for at least 150 bad-input cases; these and the broken
    corpus of tests/test_profile_corpus.py are the profiles' share."""
    from tests.test_profile_corpus import BROKEN
    assert len(CASES) >= 120 and len(CASES) + len(BROKEN) >= 150
    assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused_with_exactly_its_problems(case, tmp_path):
    profile, expected = make(case, tmp_path / case.id)
    with pytest.raises(ProfileError) as caught:
        load_profiles([profile])
    assert sorted(caught.value.problems) == sorted(expected)


@pytest.fixture(scope="module")
def all_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    return root, [make(case, root / case.id) for case in CASES]


@pytest.mark.parametrize("verb", ["check", "render"])
def test_command_line_refuses_every_case(build, all_cases, verb):
    """All cases in one run of the real command line: exit status 2, every
    expected line, nothing else, no traceback, nothing written."""
    root, made = all_cases
    out = root / f"out-{verb}"
    argv = [verb, *(str(profile) for profile, _ in made)] + (["-o", str(out)] if verb == "render" else [])
    result = build(*argv)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    problems = result.stderr.split("\n  ")[1:]
    problems[-1] = problems[-1].removesuffix("\n")
    assert sorted(problems) == sorted(line for _, lines in made for line in lines)
    assert not out.exists()


@pytest.mark.parametrize("case_id", ["fifo", "deep-flow", "alias-bomb", "latin-1", "name-newline-runcmd",
                                     "port-float", "nl-nfs-root", "label-node-restriction-kubernetes-io-rack-secrets",
                                     "manifest-symlink-outside", "complex-key-list"])
def test_command_line_one_case(build, tmp_path, case_id):
    [case] = [c for c in CASES if c.id == case_id]
    profile, expected = make(case, tmp_path / case.id)
    for verb in (["check"], ["render", "-o", str(tmp_path / "out")]):
        result = build(*verb, str(profile))
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[1:] == [f"  {line}" for line in expected]
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pattern, value", [
    ("^[a-z]+$", "rack\n"), ("^(?=.{1,5}$)[a-z]+$", "abc\n"), ("^[$a]+$", "a$\n"), (r"^a\$$", "a$\n"),
    ("^[]$a]+$", "$\n")])
def test_pattern_end_is_end_of_string(pattern, value):
    """Each `$` anchor of the schema is the end of the string, as in ECMA-262."""
    import re
    assert re.search(pattern, value)                      # Python's own reading: the bug
    assert not re.search(anchored_at_end(pattern), value)
    assert re.search(anchored_at_end(pattern), value[:-1])


def test_every_schema_pattern_refuses_a_trailing_newline():
    """For each pattern in the schema, a value it accepts is refused with a newline after it."""
    import json
    samples = {"uplink": "eth0", "ssh_authorized_keys": KEY + " me", "version": "v1.31.4+k3s1",
               "serial": "00000001", "tftp_root": "/srv/a", "nfs_root": "/srv/b", "manifests": "kube",
               "type": "Opaque", "data": "k", "description": "d", "key": "k", "dnsLabel": "a", "dnsName": "a.b",
               "dnsNameOrAddress": "a", "hostName": "Rack4.b", "mac": "dc:a6:32:00:00:01", "srvPath": "/srv/a", "labels": "a"}
    found = []

    def walk(node, name):
        if isinstance(node, dict):
            if "pattern" in node:
                found.append((name, node["pattern"]))
            for key, value in node.items():
                walk(value, key if isinstance(value, dict) and key not in ("items", "propertyNames",
                                                                            "additionalProperties") else name)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)
    walk(json.loads(SCHEMA_PATH.read_text()), "")
    assert len(found) >= 15
    strict = validator()
    for name, pattern in found:
        sample = samples[name]
        assert strict.evolve(schema={"pattern": pattern}).is_valid(sample), (name, pattern)
        assert not strict.evolve(schema={"pattern": pattern}).is_valid(sample + "\n"), (name, pattern)


def test_allowed_kubelet_labels_pass(tmp_path):
    allowed = ["kubernetes.io/arch", "topology.kubernetes.io/zone", "node.kubernetes.io/pool",
               "a.kubelet.kubernetes.io/x", "failure-domain.beta.kubernetes.io/region", "example.dev/x"]
    (tmp_path / "defaults.yaml").write_text(BASE_DEFAULTS.read_text())
    labels = ", ".join(f"{key}: v" for key in allowed)
    (tmp_path / "r.yaml").write_text(f"rack: r\nk3s: {{node_labels: {{{labels}}}}}\n")
    [profile] = load_profiles([tmp_path / "r.yaml"])
    assert dict(profile.k3s.node_labels) == {key: "v" for key in allowed}


def test_fifo_is_refused_without_blocking(tmp_path):
    """Nobody writes to the FIFO: a reader that opened it would wait forever."""
    import threading
    directory = tmp_path / "d"
    directory.mkdir()
    shutil.copy(BASE_DEFAULTS, directory / "defaults.yaml")
    profile = _fifo(directory)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(pytest.raises(ProfileError, load_profiles, [profile])),
                              daemon=True)
    worker.start()
    worker.join(5)
    assert outcome, "load_profiles blocked on a FIFO"
