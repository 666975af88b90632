"""build.py's command line. Each verb is declared once, in VERBS: what it
needs (its profiles, an output directory, root, the host's build tools) and
its options; argparse and main's order of work are driven by that table.

    parse             standard library only: --help and bad option values
                      install nothing and need nothing installed
    the virtualenv    image/hostenv.py: the Python libraries every verb uses
                      (on a fresh machine: made, then build.py re-executed in it)
    preflight         image/verbs.py: every input the verb needs is checked
                      (exit 2), nothing written, no slow step
    host tools        image/hostenv.py: only for a verb that runs them
    run               the verb's slow work, into the output directory it claims
"""

import argparse
import importlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import RackbootError
from firstboot.layout import MACHINE
from image import hostenv, k3s_fetch, output, rootfs

REPO_PROFILES = hostenv.REPO / "rack-profiles"


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    settings: dict = field(default_factory=dict)     # argparse's add_argument keywords


@dataclass(frozen=True)
class Verb:
    """A verb of build.py. image/verbs.py has its preflight_NAME(args) (every
    check; returns what run needs) and run_NAME(args, ready) (NAME with _ for -)."""
    name: str
    help: str
    needs_output: bool = True       # -o DIR required
    needs_root: str | None = None   # why it needs root, if it does
    needs_tools: bool = False       # the host's build and boot tools (image/hostenv.py)
    takes_versions: bool = False    # arguments may be k3s versions as well as profiles
    takes_profiles: bool = True     # PROFILE...; if not, its options declare its positional arguments
    takes_command: bool = False     # everything after the first `--` is args.command, untouched
    output_file: bool = False       # -o names a file (- for standard output), not a directory
    options: tuple[Option, ...] = ()

    @property
    def function_suffix(self) -> str:
        return self.name.replace("-", "_")


def _port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _release(text: str) -> str:
    # It names the root filesystem's cache entry (rootfs-RELEASE-...): no paths.
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Debian release name such as bookworm or trixie")
    return text


ROOTFS = (
    Option(("--release",), dict(type=_release, default=rootfs.DEFAULT_RELEASE, help="Debian release (default: %(default)s)")),
    Option(("--cache-dir",), dict(type=Path, default=rootfs.default_cache_dir(), metavar="DIR",
                                  help="root filesystem cache (default: %(default)s)")),
    Option(("--no-cache",), dict(action="store_true", help="rebuild the root filesystem")),
)
COMPRESS = Option(("--compress",), dict(action="store_true", help="also write a zstd copy (IMAGE.zst)"))
K3S_BUNDLE = Option(("--k3s-bundle",), dict(
    type=Path, metavar="DIR", action="append",
    help="include this k3s bundle (from fetch-k3s: DIR is its VERSION directory; the Pis' root gets its arm64 "
         "files); verified again first. Once per k3s version the racks want: racks of one image may want "
         "different versions"))
FETCH = (
    Option(("--mirror",), dict(metavar="URL", help=f"where releases are (default: ${k3s_fetch.MIRROR_ENV} "
                                                   f"or {k3s_fetch.DEFAULT_MIRROR})")),
    Option(("--channel-url",), dict(metavar="URL", help="the k3s release channel server VERSION may name a "
                                                        "channel of (stable, latest, v1.MINOR) at (default: "
                                                        f"${k3s_fetch.CHANNEL_URL_ENV} or {k3s_fetch.DEFAULT_CHANNEL_URL})")),
    Option(("--pin",), dict(action="store_true",
                            help="pin the fetched releases' checksum files (PINS/VERSION/sha256sum-ARCH.txt), to "
                                 "commit; a pinned release is fetched only if the mirror serves exactly those")),
    Option(("--pins",), dict(type=Path, metavar="PINS",
                             help="where pinned checksum files are (default: image/k3s-pins in this repository)")),
)
SEED = (
    Option(("--agent-env",), dict(action="append", default=[], metavar="NAME=VALUE",
                                  help="environment for the first-boot agent, e.g. SECRET_MANAGER_EMULATOR_HOST="
                                       "host:port or RACKBOOT_SECRET_MANAGER_ENDPOINT=host (repeatable)")),
    Option(("--credentials",), dict(type=Path, metavar="KEY.json",
                                    help="a service account key for the agent (Application Default "
                                         "Credentials); the seed then holds a credential")),
)
BOOT = (
    Option(("--kvm",), dict(action="store_true",
                            help="use KVM instead of TCG (guests are known to hang under KVM on some hosts)")),
    Option(("--no-seed",), dict(action="store_true",
                                help="boot without the rack's seed (the jumphost must then recognise its network)")),
    Option(("--ssh-port",), dict(type=_port, metavar="PORT", help="forward 127.0.0.1:PORT to the guest's ssh")),
    Option(("--api-port",), dict(type=_port, metavar="PORT",
                                 help="forward 127.0.0.1:PORT to the guest's k3s API (kubeconfig: sudo cat "
                                      f"{MACHINE.kubeconfig} on the guest, server port changed to PORT)")),
    Option(("--until-report",), dict(action="store_true",
                                     help="run headless until the agent reports, print the report, and stop")),
    Option(("--timeout",), dict(type=_seconds, default=900, help="seconds to wait with --until-report")),
)
ATTACH = (
    Option(("rack",), dict(metavar="RACK", help="the rack's name (its profile's rack:); after it, -- CMD...")),
    Option(("--profiles",), dict(type=Path, default=REPO_PROFILES, metavar="PROFILE|DIR",
                                 help="where the rack's profile is (default: %(default)s)")),
    Option(("--ssh-config",), dict(type=Path, metavar="FILE",
                                   help="ssh's configuration file (ssh -F) instead of ~/.ssh/config, e.g. a "
                                        "team's file with the jumphosts' Host entries")),
)
REVISION = Option(("--revision",), dict(type=int, metavar="N",
                                          help="the bundle's revision (default: the profile repository's commit "
                                               "count; needs its rack inputs committed)"))
PUSH = (
    Option(("--to",), dict(required=True, metavar="HOST", help="the jumphost to push to (ssh host name)")),
    Option(("--dry-run",), dict(action="store_true", help="show the files and objects that would change only")),
    Option(("--rollback",), dict(action="store_true", help="go back to the jumphost's previous revision "
                                                           "(nothing is sent)")),
    REVISION,
    ATTACH[2],
    Option(("--k3s-bundle",), dict(type=Path, metavar="DIR", help="send this k3s bundle too (fetch-k3s's DIR; the "
           "profile's k3s.version): the jumphost upgrades k3s in place, its Pis follow; one minor at a time")),
)
ROUTER = (
    Option(("--to",), dict(required=True, metavar="ROUTER",
                           help="the rack router, as ssh reaches it: a Host of your ssh configuration, a name or "
                                "an address")),
    Option(("--cutover",), dict(action="store_true",
                                help="point the host_aliases (metadata, ...) at rackboot's jumphost (jumphost.address)")),
    Option(("--rollback",), dict(action="store_true",
                                 help="point them back at the legacy jumphost (migration.legacy_address); the other "
                                      "way back is `sudo systemctl start metadata` on the legacy jumphost")),
    Option(("--dry-run",), dict(action="store_true",
                                help="show what would change (the hosts file's diff, or the EdgeOS commands) and "
                                     "change nothing")),
    Option(("--edgeos",), dict(action="store_true",
                               help="configure EdgeOS's system static-host-mapping (vyatta-cfg-cmd-wrapper: begin, "
                                    "set, commit, save, end) instead of editing a hosts file")),
    Option(("--hosts-file",), dict(default="/etc/hosts", metavar="PATH",
                                   help="the router's hosts file that its dnsmasq reads (default: %(default)s); "
                                        "rackboot replaces only its own marked block")),
    Option(("--dnsmasq-pidfile",), dict(default="/var/run/dnsmasq/dnsmasq.pid", metavar="PATH",
                                        help="the router's dnsmasq pid file; dnsmasq gets SIGHUP to read the hosts "
                                             "file again (default: %(default)s)")),
    Option(("--user",), dict(default="ubnt", help="the router's admin user, with password-less sudo "
                                                  "(default: %(default)s, EdgeOS's)")),
    Option(("--ssh-config",), dict(type=Path, metavar="FILE", help="ssh's configuration file (ssh -F) instead of "
                                                                   "~/.ssh/config")),
)
DESCRIPTION = "rackboot: build the images of racks of lab machines from their profiles."
ROOT_FOR_ROOTFS = "mmdebstrap in root mode, unpacking the root filesystem with its owners"

VERBS = (
    Verb("check", "validate rack profiles; report every problem as FILE: PATH: MESSAGE", needs_output=False),
    Verb("render", "write every generated file (cloud-init, units, k3s, dnsmasq, NFS, router hosts) into "
                   "DIR/RACK/, mirroring where it lands"),
    Verb("image", "build the hot-swappable x86-64 jumphost disk image serving these racks (and, for racks "
                  "with Pis, their netboot tree and NFS root): DIR/jumphost.img with .sha256 and .bmap "
                  "(needs root)",
         needs_root=f"building an image needs root ({ROOT_FOR_ROOTFS})", needs_tools=True,
         options=(*ROOTFS, COMPRESS, K3S_BUNDLE)),
    Verb("seed", "write each rack's NoCloud seed (a CIDATA disk image) as DIR/seed-RACK.img",
         needs_tools=True, options=SEED),
    Verb("fetch-k3s", "download a k3s release's binaries and air-gap images (amd64, arm64) into DIR/VERSION/, "
                      "verified against the release's checksums, and those against the ones pinned in "
                      "image/k3s-pins/VERSION/ if any; each argument is a version (v1.31.4+k3s1), a release channel "
                      "(stable, latest, testing, v1.33: the version it points to now) or a profile naming one",
         takes_versions=True, options=FETCH),
    Verb("netboot", "write the Raspberry Pi TFTP tree a Pi 4 bootloader fetches: firmware, config.txt, kernel, "
                    "initramfs, device trees, cmdline.txt (NFS root), one directory per Pi; DIR/tftp; and the "
                    "Pis' shared NFS root, DIR/pi-root (DIR/RACK/... for several racks; needs root)",
         needs_root="building the Pi root filesystem needs root (mmdebstrap in root mode)", needs_tools=True,
         options=(*ROOTFS, K3S_BUNDLE)),
    Verb("sdcard", "build the SD-card image for this rack's Pis that boot from a card instead of the network: "
                   "DIR/pi-sdcard.img (MBR: FAT boot partition, ext4 root that grows to fill the card) with "
                   ".sha256 and .bmap (needs root)",
         needs_root=f"building the Pi root filesystem and its card image needs root ({ROOT_FOR_ROOTFS})",
         needs_tools=True, options=(*ROOTFS, COMPRESS, K3S_BUNDLE)),
    Verb("boot", "boot DIR/jumphost.img in QEMU (UEFI, TCG) as a jumphost of this rack, with its seed; "
                 "changes are discarded", needs_tools=True, options=(*SEED, *BOOT)),
    Verb("clusters", "write the racks' clusters.json, the original team's cluster list: {\"clusters\": {RACK: "
                     "{\"type\": \"k3s\", \"context_name\": RACK, \"jumphost\": jumphost.ssh_host, \"port\": "
                     "\"k3s.attach_port\"}}}", output_file=True),
    Verb("attach", "give this shell, or CMD, the rack's cluster: fetch k3s's kubeconfig from the jumphost over "
                   "ssh (as its admin user) into a KUBECONFIG of its own, forward 127.0.0.1:k3s.attach_port to "
                   "the rack's API, run CMD or $SHELL, then take the forward down and remove the kubeconfig; "
                   "exits with CMD's status", needs_output=False, takes_profiles=False, takes_command=True,
         options=ATTACH),
    Verb("bundle", "write the rack's bundle (its model, profile files, rendered files and TFTP tree, with a "
                   "revision and a digest in BUNDLE.json) into DIR/RACK/", options=(REVISION,)),
    Verb("make-ca", "make the rack's cluster CA as k3s's generate-custom-ca-certs.sh does, into DIR/RACK/: "
                    "cluster-ca.tar.gz (store it and name it as k3s.ca: every jumphost of the rack then runs this "
                    "CA) and the root and intermediate CA (keep them offline); never replaces one"),
    Verb("push", "send the rack's bundle to its running jumphost over ssh (as its admin user), which verifies "
                 "it, refuses another rack's or an older one, puts it in place and runs its agent again",
         needs_output=False, options=PUSH),
    Verb("router", "migrate a rack's names on its router over ssh, either way: --cutover points the host_aliases "
                   "(the design's metadata) at rackboot's jumphost, --rollback back at the legacy jumphost "
                   "(migration.legacy_address); in the router's hosts file (a marked block, replaced at once, "
                   "other lines kept; dnsmasq reloaded) or with --edgeos in EdgeOS's static-host-mapping",
         needs_output=False, options=ROUTER),
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="build.py", description=DESCRIPTION,
        epilog="Profiles are YAML files in rack-profiles/ (schema: rack-profiles/schema.json); "
               "a directory stands for every profile in it.")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        if verb.takes_versions:
            sub.add_argument("profiles", nargs="+", metavar="VERSION|PROFILE",
                             help="a k3s release tag, or a rack profile (or directory) naming one")
        elif verb.takes_profiles:
            sub.add_argument("profiles", nargs="+", metavar="PROFILE",
                             help="rack profile (YAML) or a directory of them")
        if verb.output_file:
            sub.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                             help="output file (required), replaced whole; - for standard output")
        elif verb.takes_profiles and verb.needs_output:     # check, push and router write nothing here
            sub.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                             help=f"output directory (required): new, empty, or one rackboot made (it holds "
                                  f"{output.MARKER})")
        sub.add_argument("-v", "--verbose", action="store_true", help="log every command run")
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
        for option in verb.options:
            sub.add_argument(*option.flags, **option.settings)
        sub.set_defaults(verb_declared=verb)
    return top


def _require_root(verb: Verb) -> None:
    if verb.needs_root and os.geteuid() != 0:
        raise RackbootError(verb.needs_root, hint=f"sudo {' '.join(sys.argv)}")


def _perform(args) -> int:
    verb: Verb = args.verb_declared
    verbs = importlib.import_module("image.verbs")    # needs the virtualenv's libraries
    verbs.progress.setup(args.verbose)
    ready = getattr(verbs, f"preflight_{verb.function_suffix}")(args)
    _require_root(verb)      # after the input's checks: bad input is reported as such, as root or not
    if verb.needs_tools:
        hostenv.ensure_tools()
    return getattr(verbs, f"run_{verb.function_suffix}")(args, ready)


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """A verb that runs a command takes everything after the first `--` as
    it is (argparse would drop later `--`s: kubectl exec POD -- sh needs them)."""
    commanded = {verb.name for verb in VERBS if verb.takes_command}
    if argv[:1] and argv[0] in commanded and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    argv, command = _split_command(sys.argv[1:] if argv is None else list(argv))
    args = parser().parse_args(argv)
    args.command = command
    # On a fresh machine the first run installs the virtualenv and re-executes
    # itself inside it (after parsing: --help and bad options need none of it).
    hostenv.ensure_venv()
    try:
        return _perform(args)
    except RackbootError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
