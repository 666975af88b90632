"""build.py router PROFILE --to ROUTER (--cutover | --rollback): the rack
router's names for the rack, delivered over ssh (image/ssh.py's options:
BatchMode, host keys checked as the operator's ssh checks them).

- --cutover: the host_aliases (the design's `metadata`) and the jumphost's
  own name resolve to jumphost.address, rackboot's jumphost;
- --rollback: the host_aliases resolve to migration.legacy_address again,
  the legacy jumphost, which keeps its own metadata service through the
  migration (the other way back: `sudo systemctl start metadata` there).

Two ways, as routers differ:

- a hosts file (default /etc/hosts), which the router's dnsmasq reads: its
  block (image/hosts_block.py) is replaced, every other line kept; the new
  file is written beside the old one (a copy of it first, so it keeps its
  owner and mode) and renamed over it, so dnsmasq and every reader see the
  old file or the new one, never half of one; then dnsmasq is sent SIGHUP,
  on which it reads its hosts files again (dnsmasq(8), SIGHUP). Its pid is
  read from its pid file, and only a process named dnsmasq is signalled;
- --edgeos: EdgeOS's own configuration, `system static-host-mapping
  host-name NAME inet ADDRESS` for each name, through vyatta-cfg-cmd-wrapper
  (begin, set..., commit, save, end in one session; discard on a failure).
  EdgeOS then writes /etc/hosts and restarts its dnsmasq itself.

Every remote command is an argv list (ssh.remote quotes each word); a
file's content goes to the router as tee's standard input, never in a
command. Names and addresses are checked again here, whatever built the
profile: a name is a DNS label, an address an IPv4 address.
"""

import enum
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from firstboot.errors import BadInput, RackbootError
from firstboot.profile import RackProfile
from image import hosts_block, render, ssh

log = logging.getLogger("rackboot")

DEFAULT_HOSTS_FILE = "/etc/hosts"
DEFAULT_PIDFILE = "/var/run/dnsmasq/dnsmasq.pid"    # Debian's and EdgeOS's dnsmasq
DEFAULT_USER = "ubnt"                                 # EdgeOS's first admin user
WRAPPER = "/opt/vyatta/sbin/vyatta-cfg-cmd-wrapper"   # EdgeOS's configuration commands for scripts
NOTHING_TO_COMMIT = "No configuration changes to commit"    # commit's answer to a session that changed nothing
TEMPLATE = "router/hosts.j2"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*")


class Direction(enum.StrEnum):
    """Which jumphost the host_aliases go to."""
    CUTOVER = "cutover"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Request:
    """What the operator asked for, checked."""
    profile: RackProfile
    direction: Direction
    target: ssh.Target
    hosts_file: str
    pidfile: str
    edgeos: bool
    dry_run: bool

    @property
    def where(self) -> str:
        return f"{self.target.host}:{self.hosts_file}"


def aliases_at(profile: RackProfile, direction: Direction) -> ipaddress.IPv4Address:
    return profile.jumphost.address if direction is Direction.CUTOVER else profile.migration.legacy_address


def _checked_names(profile: RackProfile) -> None:
    for what, name in [("jumphost.hostname", profile.jumphost.hostname),
                       *(("host_aliases", alias) for alias in profile.host_aliases)]:
        if not isinstance(name, str) or not _LABEL.fullmatch(name):
            raise BadInput(f"{profile.source}: {what}: {name!r} is not a DNS label: refused as a router's host name")
    for what, address in (("jumphost.address", profile.jumphost.address),
                          ("migration.legacy_address", profile.migration.legacy_address)):
        if address is not None and not isinstance(address, ipaddress.IPv4Address):
            raise BadInput(f"{profile.source}: {what}: {address!r} is not an IPv4 address")


def _checked(value: str, pattern: re.Pattern, option: str, what: str) -> str:
    if not pattern.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        raise BadInput(f"{option} {value!r} is not {what}")
    return value


def check_request(profile: RackProfile, args) -> Request:
    """Every input, before any ssh: BadInput (exit 2) naming what is wrong."""
    if args.cutover == args.rollback:
        raise BadInput("say which way: --cutover (the aliases to rackboot's jumphost) or --rollback (back to the "
                       "legacy jumphost)")
    direction = Direction.CUTOVER if args.cutover else Direction.ROLLBACK
    if not profile.host_aliases:
        raise BadInput(f"{profile.source}: rack {profile.rack} has no host_aliases: nothing to point at a jumphost")
    if direction is Direction.ROLLBACK and profile.migration.legacy_address is None:
        raise BadInput(f"{profile.source}: rack {profile.rack} has no migration.legacy_address: --rollback points "
                       "the host_aliases back at the legacy jumphost's address",
                       hint="add `migration: {legacy_address: ADDRESS}` to the profile; or, on the legacy "
                            "jumphost, `sudo systemctl start metadata` (its service, stopped for the cut-over)")
    _checked_names(profile)
    host = _checked(args.to, _HOST, "--to", "a host name or IPv4 address (RFC 1123)")
    user = _checked(args.user, _USER, "--user", "a user name")
    return Request(profile, direction, ssh.Target(host, user=user, config=args.ssh_config),
                   _checked(args.hosts_file, _PATH, "--hosts-file", "an absolute path"),
                   _checked(args.dnsmasq_pidfile, _PATH, "--dnsmasq-pidfile", "an absolute path"),
                   args.edgeos, args.dry_run)


def block_lines(profile: RackProfile, direction: Direction) -> list[str]:
    """The hosts entries of the rack for direction (templates/router/hosts.j2), without its comments."""
    text = render._render(render.environment(), TEMPLATE, p=profile, aliases_at=aliases_at(profile, direction))
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def edgeos_commands(profile: RackProfile, direction: Direction) -> list[list[str]]:
    """vyatta-cfg-cmd-wrapper's arguments that map each name for direction.
    Each name is a host-name entry of its own, so a set replaces its single
    inet (a cut-over and a rollback are both plain sets, in any order)."""
    _checked_names(profile)
    mapping = [(profile.jumphost.hostname, profile.jumphost.address)]
    mapping += [(alias, aliases_at(profile, direction)) for alias in profile.host_aliases]
    return [["set", "system", "static-host-mapping", "host-name", name, "inet", str(address)]
            for name, address in mapping]


# ------------------------------------------------------------------ over ssh


_ROUTER_HINTS = (
    ("Permission denied", "the router must accept your key for {user} (EdgeOS: set system login user {user} "
                          "authentication public-keys ...), loaded in ssh-agent or named by IdentityFile without "
                          "a passphrase: rackboot runs ssh with BatchMode=yes"),
    ("Connection refused", "is the router up and its ssh service on (EdgeOS: service ssh)?"),
    ("Connection timed out", "is the router up and reachable from here (--to, or a Host entry with ProxyJump)?"),
    ("No route to host", "is the router up and reachable from here (--to, or a Host entry with ProxyJump)?"),
    ("Could not resolve hostname", "--to must be a name your DNS or ssh configuration (a Host entry) knows"),
    ("Host key verification failed", "check the router's key and accept it once with `ssh {user}@{host}`"),
    ("a password is required", "{user} on the router needs password-less sudo for cat, cp, tee, mv and pkill "
                               "(EdgeOS's admin users have it)"),
)


def _remote(request: Request, command: list[str], what: str, input: str | None = None,
            hint: str | None = None, stdout_in_errors: bool = False) -> str:
    """command's output on the router; a RackbootError saying what failed,
    where: ssh's own failures with what to do about a router, a failed
    command with its stderr's tail and hint."""
    try:
        return ssh.remote(request.target, command, timeout=60, input=input, stdout_in_errors=stdout_in_errors)
    except ssh.SshFailed as err:
        words = {"user": request.target.user, "host": request.target.host}
        known = next((h.format(**words) for needle, h in _ROUTER_HINTS if needle in err.stderr), None)
        if known is None and err.status != 255:        # the command failed, not ssh or sudo
            tail = "\n".join(err.stderr.strip().splitlines()[-5:])
            raise RackbootError(f"router {request.target.host}: {what} failed (exit status {err.status})"
                                + (f":\n{tail}" if tail else ""), hint=hint) from None
        raise RackbootError(f"router {request.target.host}: {what}: {err}", hint=known or err.hint) from None


def _read(request: Request) -> str:
    return _remote(request, ["sudo", "-n", "cat", "--", request.hosts_file], f"reading {request.hosts_file}")


def _dnsmasq(request: Request, signal: str) -> None:
    """signal 0: is dnsmasq running; HUP: it reads its hosts files again."""
    what = "finding dnsmasq" if signal == "0" else "reloading dnsmasq"
    _remote(request, ["sudo", "-n", "pkill", f"-{signal}", "-F", request.pidfile, "-x", "dnsmasq"],
            f"{what} (no process named dnsmasq has the pid in {request.pidfile})",
            hint="is dnsmasq the router's DNS server (EdgeOS: service dns forwarding)? --dnsmasq-pidfile names "
                 "its pid file; for EdgeOS's own configuration, use --edgeos")


def _replace(request: Request, old: str, new: str) -> None:
    """The router's hosts file becomes new, at once, if it is still old."""
    path = PurePosixPath(request.hosts_file)
    staged = str(path.with_name(f".{path.name}.rackboot-new"))
    try:
        hint = (f"rackboot writes the new file beside {path.name} and renames it over it, so {path.parent} must "
                f"be writable by root: is its file system read-only, or is --hosts-file not the file dnsmasq reads?")
        _remote(request, ["sudo", "-n", "cp", "-p", "--", request.hosts_file, staged],
                f"copying {request.hosts_file} to {staged} (its owner and mode)", hint=hint)
        _remote(request, ["sudo", "-n", "tee", "--", staged], f"writing {staged}", input=new, hint=hint)
        if _read(request) != old:
            raise RackbootError(f"{request.where} changed on the router while rackboot was changing it: "
                                "left as it is now", hint="look at it, and run build.py router again")
        _remote(request, ["sudo", "-n", "mv", "-f", "-T", "--", staged, request.hosts_file],
                f"renaming {staged} to {request.hosts_file}")
    except RackbootError:
        try:
            _remote(request, ["sudo", "-n", "rm", "-f", "--", staged], f"removing {staged}")
        except RackbootError as err:
            log.warning("could not remove %s:%s: %s", request.target.host, staged, err)
        raise


def deliver_hosts(request: Request) -> int:
    profile = request.profile
    old = _read(request)
    new = hosts_block.replaced(old, profile.rack, block_lines(profile, request.direction), request.where)
    change = hosts_block.diff(old, new, request.where)
    print(change or f"{request.where}: already as --{request.direction} makes it: no change", end="" if change else "\n")
    if request.dry_run or not change:
        return 0
    _dnsmasq(request, "0")       # before anything is written: a router without a running dnsmasq is refused
    _replace(request, old, new)
    _dnsmasq(request, "HUP")
    log.info("%s: rack %s's block replaced; dnsmasq reloaded: %s now at %s", request.where, profile.rack,
             ", ".join(profile.host_aliases), aliases_at(profile, request.direction))
    return 0


def deliver_edgeos(request: Request, session: str | None = None) -> int:
    """The commands in one configuration session of their own (CMD_WRAPPER_SESSION_ID)."""
    commands = edgeos_commands(request.profile, request.direction)
    if request.dry_run:
        for words in commands:
            print(" ".join(words))
        return 0
    session = session or f"rackboot-{os.getpid()}"

    def wrapper(*words: str) -> None:
        _remote(request, ["env", f"CMD_WRAPPER_SESSION_ID={session}", WRAPPER, *words],     # Vyatta's errors are
                f"vyatta-cfg-cmd-wrapper {' '.join(words)}", stdout_in_errors=True)           # on its stdout

    def quietly(*words: str) -> None:        # clean-up after a failure: its own failure is only logged
        try:
            wrapper(*words)
        except RackbootError as err:
            log.warning("%s", err)

    wrapper("begin")
    try:
        for words in commands:
            wrapper(*words)
        try:
            wrapper("commit")
        except RackbootError as err:
            if NOTHING_TO_COMMIT not in str(err):       # the router is already as asked
                raise
            print(f"router {request.target.host}: already as --{request.direction} makes it: no change")
        wrapper("save")
    except RackbootError:
        quietly("discard")
        quietly("end")
        raise
    wrapper("end")
    log.info("router %s: static-host-mapping committed and saved: %s now at %s", request.target.host,
             ", ".join(request.profile.host_aliases), aliases_at(request.profile, request.direction))
    return 0


def run(request: Request) -> int:
    return deliver_edgeos(request) if request.edgeos else deliver_hosts(request)
