"""A Pi's ssh access, set up at every boot before sshd starts
(rackboot-pi-access.service: `python -m firstboot pi-access`):

  - the rack's admin keys (the profile's jumphost.ssh_authorized_keys) into
    Layout.authorized_keys(ADMIN), the only file sshd reads keys from (the
    shared root's drop-in, image/payload.py, says so): the shared root
    serves every rack of the image, so it cannot carry one rack's keys;
  - the Pi's own host key from its jumphost (firstboot/host_keys.py) at
    Layout.ssh_host_key, the only host key sshd uses;
  - its hostname: its node name. The shared root's /etc/hostname
    (rackboot-pi) is every Pi's, so the kernel's hostname is set here, before
    sshd, the agent and k3s start (the unit is ordered before them), and
    systemd-hostnamed reports it as the transient hostname.

A Pi that cannot get its key still gets ssh: it keeps the key it has (an
SD-card Pi's, from an earlier boot) or makes a fresh one, and says so, once,
in the journal and on the console. Its ssh clients will then see another
host key than the one they know until it gets its own at a later boot.

It identifies the Pi as the agent does, on its own (its rack's bundle in use
fetched from the jumphost first: firstboot/pi_bundle.py): sshd must not wait for
the agent's longer steps, nor stay down when they fail. Keys never appear
in its output.
"""

import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from firstboot import host_keys, identify, pi_bundle, rack_model, system
from firstboot.errors import RackbootError
from firstboot.layout import Layout

log = logging.getLogger("rackboot.pi-access")

ADMIN = "rackboot"        # the admin user, as the jumphost's cloud-init user-data names it
FETCH_TIMEOUT = float(os.environ.get("RACKBOOT_HOST_KEY_TIMEOUT", "60"))   # sshd waits for this
RETRY_SECONDS = 3
CMDLINE = Path("/proc/cmdline")   # the kernel's (as firstboot/agent.py reads it): rackboot.rack=


class NoHostKey(Exception):
    """Why the jumphost gave this Pi no host key (never the key)."""


def identify_pi(layout: Layout, timeout: float = FETCH_TIMEOUT) -> identify.Identity:
    cmdline = CMDLINE.read_text()
    pi_bundle.refresh(layout, cmdline, timeout)     # a Pi added by a push is only in its jumphost's bundle
    return identify.identify_pi(rack_model.read_all(layout), identify.pi_serial(),
                                identify.NetworkView.read().macs, identify.rack_from_cmdline(cmdline))


def write_authorized_keys(layout: Layout, profile) -> bool:
    """The rack's admin keys, root-owned and read-only to others (sshd's
    StrictModes refuses a file or directory others may write)."""
    path = layout.authorized_keys(ADMIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    keys = "".join(f"{key}\n" for key in profile.jumphost.ssh_authorized_keys)
    return system.place(keys.encode(), path, 0o644)


def url(profile, node: str) -> str:
    return f"http://{profile.jumphost.address}:{profile.netboot.join_port}{host_keys.PATH}{node}"


def fetch(profile, node: str, timeout: float = FETCH_TIMEOUT, sleep=time.sleep) -> bytes:
    """node's private key from the join service; NoHostKey when it refuses
    (at once) or does not answer within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url(profile, node), timeout=10) as answer:
                return answer.read(host_keys.MAX_KEY_BYTES + 1)
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code}: {err.read(500).decode(errors='replace').strip()}"
            if err.code != 503:          # a refusal: asking again changes nothing
                raise NoHostKey(reason) from None
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        if time.monotonic() >= deadline:
            raise NoHostKey(f"no answer within {timeout:.0f} s; last: {reason}")
        sleep(RETRY_SECONDS)


def _present_key(layout: Layout):
    """The key already at Layout.ssh_host_key, if it is a whole Ed25519 key."""
    try:
        return host_keys.load_private(layout.ssh_host_key.read_bytes())
    except (OSError, ValueError):
        return None


def _same_key(one, other) -> bool:
    return host_keys.openssh_public(one, "") == host_keys.openssh_public(other, "")


def install(layout: Layout, key, node: str) -> bool:
    """key at Layout.ssh_host_key (0600) and its .pub (0644), each placed
    atomically; unchanged when that key is already there (the OpenSSH file
    of one key differs at each writing: it holds a random check number)."""
    present = _present_key(layout)
    if present is not None and _same_key(present, key) and layout.ssh_host_key.with_suffix(".pub").exists():
        return False
    system.place(host_keys.openssh_private(key), layout.ssh_host_key, 0o600)
    system.place(host_keys.openssh_public(key, node), layout.ssh_host_key.with_suffix(".pub"), 0o644)
    return True


def ensure_host_key(layout: Layout, profile, node: str, timeout: float = FETCH_TIMEOUT) -> str:
    """The Pi's host key in place; returns where it came from: "jumphost",
    "kept" or "fresh". profile None: the Pi was not identified."""
    try:
        if profile is None:
            raise NoHostKey("this Pi is in no rack profile of this image")
        key = host_keys.load_private(fetch(profile, node, timeout))
        install(layout, key, node)
        return "jumphost"
    except (NoHostKey, ValueError) as err:
        problem = str(err)
    present = _present_key(layout)
    if present is not None:
        log.warning("ssh host key: none from the jumphost (%s); sshd keeps the key this Pi already has", problem)
        install(layout, present, node)
        return "kept"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    log.warning("ssh host key: none from the jumphost (%s); sshd gets a fresh key for this boot, and ssh "
                "clients will see a changed host key for %s", problem, node)
    install(layout, Ed25519PrivateKey.generate(), node)
    return "fresh"


def set_hostname(node: str) -> bool:
    """The kernel's hostname: node (a checked DNS-1123 label, the profile's Pi name)."""
    if socket.gethostname() == node:
        return False
    socket.sethostname(node)
    return True


def run(layout: Layout | None = None, timeout: float = FETCH_TIMEOUT) -> int:
    """The unit's work; exit status 1 when the Pi was not identified (it
    still gets a host key, and no admin keys)."""
    layout = layout or Layout.from_environment()
    try:
        identity = identify_pi(layout, timeout)
    except RackbootError as err:
        log.error("ssh access: %s; no admin keys on this Pi", err)
        ensure_host_key(layout, None, "unknown", timeout)
        return 1
    if set_hostname(identity.node):
        log.info("hostname: %s", identity.node)
    changed = write_authorized_keys(layout, identity.profile)
    source = ensure_host_key(layout, identity.profile, identity.node, timeout)
    log.info("ssh access for %s of rack %s: %d admin key(s)%s; host key %s", identity.node, identity.rack,
             len(identity.profile.jumphost.ssh_authorized_keys), " (changed)" if changed else "",
             {"jumphost": "from the jumphost", "kept": "kept", "fresh": "fresh"}[source])
    return 0
