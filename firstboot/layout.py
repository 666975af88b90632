"""Every path the builder lays down and the agent reads, spelled once.

    Layout(Path("/"))          the machine the agent runs on (and, as
                               MACHINE, the paths rendered files name)
    Layout(tree)               an image's root filesystem being built
    Layout.from_environment()  the agent's, with the RACKBOOT_* overrides the
                               tests use to point it elsewhere

What the image carries:

    usr/lib/rackboot/                     the agent (PYTHONPATH of its units)
        firstboot/, site-packages/        its code and vendored libraries
        rack-profiles/                    the profiles it was built from
        k3s/VERSION/                      k3s bundles (binary, images, checksums)
        pi-root.squashfs                  the Pis' shared root (jumphost image)
        pi-boot/                          the Pis' boot files the TFTP trees link to (jumphost image)
    usr/share/rackboot/racks/RACK/        each rack's bundle as the image was built with it
                                          (firstboot/bundle.py; pushed ones: var/lib/rackboot/bundles):
        BUNDLE.json                       its revision, k3s version, entries and digest
        profile.json                      its validated profile (the model)
        profiles/                         the profile, defaults and manifests the model names
        jumphost/rootfs/MACHINE-PATH      files the jumphost installs
        pi/rootfs/MACHINE-PATH            files of the Pis' shared root
        pi/nodes/NODE/MACHINE-PATH        files of one Pi
        tftp/                             the Pis' TFTP tree (jumphost image)

What the machine keeps (k3s's own paths are k3s's install.sh's):

    etc/rancher/k3s/{config.yaml,token,agent-token,k3s.yaml}
    etc/rancher/node/password
    var/lib/rancher/k3s/{agent/images,server/db,server/tls}
    usr/local/bin/                        k3s and its links
    etc/systemd/system/                   units the agent writes
    srv/rackboot/pi-root                  where the Pis' root is mounted (jumphost)
    etc/dnsmasq.d/, etc/exports.d/        the netboot service's configuration
    var/lib/rackboot/                     the agent's status file
    var/lib/rackboot/bundles/RACK/REV/    rack bundles pushed to it (firstboot/bundle.py)
    var/lib/rackboot/k3s/VERSION/         k3s bundles pushed to it, or a Pi's from its jumphost (firstboot/k3s_store.py)
    var/lib/rackboot/k3s-served.json      the k3s version the jumphost's server runs, for its Pis
    var/lib/rackboot/metrics/rackboot.prom   its last run as Prometheus metrics (node-exporter's textfile)
    etc/rackboot/{agent.env,credentials.json}   written by cloud-init's seed
    etc/rackboot/ssh-host-key-secret      the Pis' host keys derive from it (jumphost)
    etc/ssh/ssh_host_ed25519_key[.pub]    a Pi's host key, from its jumphost
    etc/ssh/authorized_keys/USER          the rack's admin keys on a Pi
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path, PurePosixPath


class Role(str, Enum):
    """What a machine is in its rack (the k3s server, or one of its agents)."""
    JUMPHOST = "jumphost"
    PI = "pi"

    def __str__(self) -> str:
        return self.value


# Each rack's checked profile, beside its rendered tree (firstboot/rack_model.py).
RACK_MODEL = "profile.json"

# Layout parts a test may move on its own, and the variable that moves each.
OVERRIDES = {"profiles": "RACKBOOT_PROFILES", "racks": "RACKBOOT_RACKS",
             "k3s_bundles": "RACKBOOT_K3S_BUNDLES", "state_dir": "RACKBOOT_STATE_DIR"}


@dataclass(frozen=True)
class Layout:
    root: Path = Path("/")
    moved: tuple[tuple[str, Path], ...] = ()   # (part, path): parts of OVERRIDES put elsewhere
    chosen: tuple[tuple[str, Path], ...] = ()  # (rack, bundle directory) the agent uses (firstboot/bundle.py)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Layout":
        """The machine's layout, with the parts RACKBOOT_PROFILES, _RACKS,
        _K3S_BUNDLES and _STATE_DIR move (tests, and a look at an image's
        files from outside it). environ: os.environ unless given."""
        environ = os.environ if environ is None else environ
        return cls(Path("/"), tuple((part, Path(environ[variable])) for part, variable in OVERRIDES.items()
                                    if environ.get(variable)))

    def moving(self, **parts: Path) -> "Layout":
        """This layout with parts of OVERRIDES (profiles=, racks=, ...) put elsewhere."""
        unknown = set(parts) - set(OVERRIDES)
        if unknown:
            raise ValueError(f"Layout parts that cannot be moved: {', '.join(sorted(unknown))}")
        return replace(self, moved=tuple({**dict(self.moved), **{k: Path(v) for k, v in parts.items()}}.items()))

    def _at(self, machine_path: str) -> Path:
        return self.root / machine_path.lstrip("/")

    def _part(self, part: str, machine_path: str) -> Path:
        return dict(self.moved).get(part) or self._at(machine_path)

    # ------------------------------------------------ what the image carries
    @property
    def agent_dir(self) -> Path:
        return self._at("/usr/lib/rackboot")

    @property
    def site_packages(self) -> Path:
        return self.agent_dir / "site-packages"

    @property
    def profiles(self) -> Path:
        return self._part("profiles", "/usr/lib/rackboot/rack-profiles")

    @property
    def k3s_bundles(self) -> Path:
        return self._part("k3s_bundles", "/usr/lib/rackboot/k3s")

    def k3s_bundle(self, version: str) -> Path:
        return self.k3s_bundles / version

    @property
    def pi_root_image(self) -> Path:
        return self.agent_dir / "pi-root.squashfs"

    @property
    def pi_boot(self) -> Path:
        """The Pis' firmware, kernel and initramfs, one copy for all racks' TFTP trees (jumphost image)."""
        return self.agent_dir / "pi-boot"

    @property
    def racks(self) -> Path:
        return self._part("racks", "/usr/share/rackboot/racks")

    def rack(self, rack: str) -> Path:
        """The rack's bundle in use: the one chosen, else the image's."""
        return dict(self.chosen).get(rack) or self.racks / rack

    def choosing(self, bundles: Mapping[str, Path]) -> "Layout":
        return replace(self, chosen=tuple(sorted(bundles.items())))

    @property
    def pushed_bundles(self) -> Path:
        return self.state_dir / "bundles"

    def rack_model(self, rack: str) -> Path:
        return self.rack(rack) / RACK_MODEL

    def tftp_tree(self, rack: str) -> Path:
        return self.rack(rack) / "tftp"

    def rendered(self, rack: str, role: Role, machine_path: Path | str, node: str | None = None) -> Path:
        """The rendered file that the machine of role (and node, for a Pi's
        own files) installs at machine_path."""
        return self.rack(rack) / rendered_key(role, machine_path, node)

    def k3s_config_source(self, rack: str, role: Role, node: str) -> Path:
        return self.rendered(rack, role, MACHINE.k3s_config, None if role is Role.JUMPHOST else node)

    # ------------------------------------------------ what the machine keeps
    @property
    def k3s_config(self) -> Path:
        return self._at("/etc/rancher/k3s/config.yaml")

    @property
    def token_file(self) -> Path:
        return self._at("/etc/rancher/k3s/token")

    @property
    def agent_token_file(self) -> Path:
        return self._at("/etc/rancher/k3s/agent-token")

    @property
    def kubeconfig(self) -> Path:
        return self._at("/etc/rancher/k3s/k3s.yaml")

    @property
    def node_password(self) -> Path:
        return self._at("/etc/rancher/node/password")

    @property
    def rancher_state(self) -> Path:
        """k3s's state (a Pi mounts local storage here: var-lib-rancher.mount)."""
        return self._at("/var/lib/rancher")

    @property
    def k3s_images(self) -> Path:
        return self.rancher_state / "k3s/agent/images"

    @property
    def k3s_agent_state(self) -> Path:
        """What a k3s agent keeps of its server: server-ca.crt, client-kubelet.crt/.key."""
        return self.rancher_state / "k3s/agent"

    @property
    def datastore(self) -> Path:
        return self.rancher_state / "k3s/server/db"

    @property
    def k3s_tls(self) -> Path:
        """k3s's CAs and certificates (firstboot/k3s_ca.py places the rack's CA here)."""
        return self.rancher_state / "k3s/server/tls"

    @property
    def bin_dir(self) -> Path:
        return self._at("/usr/local/bin")

    @property
    def units(self) -> Path:
        return self._at("/etc/systemd/system")

    def unit(self, name: str) -> Path:
        return self.units / name

    @property
    def pi_root(self) -> Path:
        return self._at("/srv/rackboot/pi-root")

    @property
    def dnsmasq_conf(self) -> Path:
        return self._at("/etc/dnsmasq.d/rackboot-netboot.conf")

    @property
    def exports(self) -> Path:
        return self._at("/etc/exports.d/rackboot.exports")

    @property
    def state_dir(self) -> Path:
        return self._part("state_dir", "/var/lib/rackboot")

    @property
    def pushed_k3s_bundles(self) -> Path:
        """k3s bundles beyond the image's: pushed to a jumphost, or a Pi's
        from its jumphost (firstboot/k3s_store.py)."""
        return self.state_dir / "k3s"

    @property
    def k3s_served(self) -> Path:
        """The version the jumphost's k3s server runs, once ready: what its Pis follow."""
        return self.state_dir / "k3s-served.json"

    @property
    def metrics_dir(self) -> Path:
        """The agent's Prometheus textfile directory, node-exporter's only view of the state
        directory (a hostPath in the rack's node-exporter DaemonSet; not status.json)."""
        return self.state_dir / "metrics"

    @property
    def metrics_file(self) -> Path:
        return self.metrics_dir / "rackboot.prom"

    @property
    def agent_env(self) -> Path:
        return self._at("/etc/rackboot/agent.env")

    @property
    def credentials(self) -> Path:
        return self._at("/etc/rackboot/credentials.json")

    @property
    def ssh_host_key_secret(self) -> Path:
        return self._at("/etc/rackboot/ssh-host-key-secret")

    @property
    def ssh_host_key(self) -> Path:
        """The host key a Pi's sshd uses (its .pub beside it)."""
        return self._at("/etc/ssh/ssh_host_ed25519_key")

    def authorized_keys(self, user: str) -> Path:
        """The keys sshd accepts for user on a Pi (its drop-in's AuthorizedKeysFile: %u)."""
        return self._at("/etc/ssh/authorized_keys") / user

    @property
    def sshd_dropin(self) -> Path:
        return self._at("/etc/ssh/sshd_config.d/rackboot.conf")

    @property
    def sudoers_dropin(self) -> Path:
        return self._at("/etc/sudoers.d/90-rackboot-admin")


MACHINE = Layout()   # the paths as the running machine sees them: what rendered files name


def rendered_key(role: Role, machine_path: Path | str, node: str | None = None) -> PurePosixPath:
    """Where, in a rack's rendered tree, the file for machine_path lies."""
    relative = PurePosixPath(machine_path).relative_to("/")
    if node is not None:
        return PurePosixPath("pi/nodes", node, relative)
    return PurePosixPath(str(role), "rootfs", relative)


def systemd_mount_unit(where: Path) -> str:
    """A mount unit's name for where, as `systemd-escape --path --suffix=mount`
    makes it (only the characters rackboot's own paths use: letters, digits,
    '/', '-', '.', '_')."""
    def escape(part: str) -> str:
        return "".join(c if c.isalnum() or c in "_." else f"\\x{ord(c):02x}" for c in part)
    return "-".join(escape(part) for part in PurePosixPath(where).parts[1:]) + ".mount"


PI_ROOT_UNIT = systemd_mount_unit(MACHINE.pi_root)
