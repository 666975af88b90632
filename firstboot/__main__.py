"""python -m firstboot {run,status,access,join-server,pi-access,pi-watch}: the first-boot agent.

run          the steps, in order (the rackboot-firstboot unit runs this at boot)
status       which step it is on, what failed and why
access       print one secret's value to stdout, like `berglas access`
bundle       install a pushed rack bundle, roll back to the previous one, list
             them (build.py push runs these; firstboot/bundle_install.py)
join-server  the jumphost's service that gives its Pis their k3s agent token
             (rackboot-join.service runs it; see firstboot/join.py)
pi-access    a Pi's admin keys and ssh host key, before sshd starts
             (rackboot-pi-access.service runs it; see firstboot/pi_access.py)
pi-watch     a Pi's k3s agent restarted when its jumphost was swapped
             (rackboot-pi-watch.timer runs it; see firstboot/pi_watch.py)
"""

import argparse
import logging
import os
import sys
from pathlib import Path

# In the image the agent runs on Debian's python3; its Google and Kubernetes
# client libraries are installed beside it from PyPI as one consistent set.
# They go first on the path: 'google' is a namespace package, and any older
# google-auth Debian might have installed must not shadow theirs.
VENDORED = Path(__file__).resolve().parent.parent / "site-packages"
if VENDORED.is_dir():
    sys.path.insert(0, str(VENDORED))

from firstboot import agent, bundle_install, join, pi_access, pi_bundle, pi_watch, secretref, secrets  # noqa: E402
from firstboot.errors import RackbootError  # noqa: E402
from firstboot.layout import Layout, Role  # noqa: E402


def access(reference: str, key: str | None) -> int:
    try:
        value = secrets.access(secretref.parse(reference, key))
    except secretref.SecretRefError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()
    return 0


def _bundle_parser(verbs) -> None:
    bundles = verbs.add_parser("bundle", help="rack bundles on this jumphost").add_subparsers(dest="action",
                                                                                             required=True)
    install = bundles.add_parser("install", help="verify a pushed bundle (a tar file) and use it")
    install.add_argument("archive", type=Path, metavar="FILE")
    install.add_argument("--k3s-bundle", type=Path, metavar="DIR",
                         help="a k3s bundle (VERSION directory) to put in place first: the bundle's k3s version")
    rollback = bundles.add_parser("rollback", help="withdraw the newest pushed revision in use")
    listing = bundles.add_parser("list", help="the rack's bundles that verify, newest first")
    for sub in (install, rollback):
        sub.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
    for sub in (rollback, listing):
        sub.add_argument("--rack", required=True)


def _bundle(args, layout: Layout) -> str:
    if args.action == "install":
        return bundle_install.install(layout, args.archive, args.dry_run, args.k3s_bundle)
    if args.action == "rollback":
        return bundle_install.rollback(layout, args.rack, args.dry_run)
    return bundle_install.listing(layout, args.rack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firstboot", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run the first-boot steps")
    run.add_argument("--role", choices=[str(role) for role in Role], required=True,
                     help="what this image is; the rack is found at boot")
    run.add_argument("-v", "--verbose", action="store_true", default=bool(os.environ.get("RACKBOOT_VERBOSE")),
                     help="log every command it runs (+ argv); RACKBOOT_VERBOSE=1 in agent.env does the same "
                          "for the unit (off by default: the unit's output goes to the console too)")
    verbs.add_parser("status", help="show the steps' progress and any failure")
    get = verbs.add_parser("access", help="print a secret's value (berglas://, sm://, file://)")
    get.add_argument("reference", metavar="REF")
    get.add_argument("--key", help="the value is a Kubernetes Secret YAML: print base64-decoded .data[KEY]")
    server = verbs.add_parser("join-server", help="serve the k3s agent token to the rack's Pis")
    server.add_argument("--rack", required=True, help="the rack this jumphost serves")
    _bundle_parser(verbs)
    verbs.add_parser("pi-access", help="a Pi's admin keys and ssh host key (before sshd starts)")
    verbs.add_parser("pi-watch", help="restart a Pi's k3s agent when its jumphost was swapped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if getattr(args, "verbose", False):
        logging.getLogger("rackboot").setLevel(logging.DEBUG)
    try:
        layout = Layout.from_environment()
        if args.verb == "run":
            return agent.run(Role(args.role), layout)
        if args.verb == "access":
            return access(args.reference, args.key)
        if args.verb == "bundle":
            print(_bundle(args, layout))
            return 0
        if args.verb == "join-server":
            join.serve_forever(agent.rack_profile(layout, args.rack), layout.agent_token_file,
                               bundle_archive=pi_bundle.archive_for_pis(layout, args.rack), layout=layout)
            return 0
        if args.verb == "pi-access":
            return pi_access.run(layout)
        if args.verb == "pi-watch":
            return pi_watch.run(layout)
        print(agent.describe_status(layout))
        return 0
    except RackbootError as err:
        print(f"error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return err.exit_status


if __name__ == "__main__":
    sys.exit(main())
