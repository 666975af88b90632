#!/usr/bin/env python3
"""rackboot: build a rack's jumphost and Raspberry Pi images from its profile.

    ./build.py VERB PROFILE... [-o DIR]

The pipeline: profile (firstboot/profile.py) -> render (image/render.py) ->
rootfs -> disk / netboot tree -> boot. Run `./build.py VERB --help` for each
verb. Exit status: 0 success, 1 failure, 2 bad input (nothing written).
"""

import sys

from image import hostenv

# On a fresh machine the first run installs Debian packages and the
# virtualenv, then re-executes itself inside it.
hostenv.ensure()

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from firstboot.errors import RackbootError  # noqa: E402
from firstboot.profile import load_profiles  # noqa: E402
from image import log as progress  # noqa: E402
from image import render  # noqa: E402

log = logging.getLogger("rackboot")


def cmd_check(args) -> int:
    profiles = load_profiles(args.profiles)
    for profile in profiles:
        print(f"{profile.source}: ok: rack {profile.rack}, jumphost {profile.jumphost.hostname}, "
              f"{len(profile.pis)} Pi{'s' if len(profile.pis) != 1 else ''}, "
              f"{len(profile.manifests)} manifest file{'s' if len(profile.manifests) != 1 else ''}")
    return 0


def cmd_render(args) -> int:
    profiles = load_profiles(args.profiles)
    with progress.step(f"render {len(profiles)} rack{'s' if len(profiles) != 1 else ''} into {args.output}"):
        for path in render.render(profiles, args.output):
            log.info("  %s", path)
    return 0


VERBS = {
    "check": (cmd_check, "validate rack profiles; report every problem as FILE: PATH: MESSAGE",
              False),
    "render": (cmd_render, "write every generated file (cloud-init, units, k3s, dnsmasq, NFS, "
                           "router hosts) into DIR/RACK/, mirroring where it lands", True),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="build.py", description=__doc__.split("\n\n")[0],
        epilog="Profiles are YAML files in rack-profiles/ (schema: rack-profiles/schema.json); "
               "a directory stands for every profile in it.")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (func, help_text, needs_output) in VERBS.items():
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("profiles", nargs="+", metavar="PROFILE",
                         help="rack profile (YAML) or a directory of them")
        sub.add_argument("-o", "--output", type=Path, required=needs_output, metavar="DIR",
                         help="output directory" + (" (required)" if needs_output else ""))
        sub.add_argument("-v", "--verbose", action="store_true", help="log every command run")
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
        sub.set_defaults(func=func)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress.setup(args.verbose)
    try:
        return args.func(args)
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


if __name__ == "__main__":
    sys.exit(main())
