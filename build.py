#!/usr/bin/env python3
"""rackboot: build the images of racks of lab machines from their profiles.

    ./build.py VERB PROFILE... [-o DIR]

The pipeline: profile (firstboot/profile.py) -> render (image/render.py) ->
rootfs (image/rootfs.py) -> disk (image/jumphost.py, image/disk.py) -> boot
(image/qemu.py), and for Raspberry Pis rootfs (arm64) -> TFTP tree and NFS
root (image/netboot.py), or an SD card (image/sdcard.py). Run
`./build.py VERB --help` for each verb. Exit status: 0 success, 1 failure,
2 bad input (nothing written).
"""

import sys

from image import hostenv

# On a fresh machine the first run installs Debian packages and the
# virtualenv, then re-executes itself inside it.
hostenv.ensure()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from firstboot.errors import BadInput, RackbootError  # noqa: E402
from firstboot.profile import load_profiles  # noqa: E402
from image import agent_env, jumphost, k3s_bundle, k3s_fetch, k3s_pins, netboot, output, qemu, render, rootfs, sdcard, seed  # noqa: E402
from image import progress  # noqa: E402
from image.output import Kind  # noqa: E402

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
    out = output.check(args.output, {p.rack: Kind.DIRECTORY for p in profiles})
    with progress.step(f"render {len(profiles)} rack{'s' if len(profiles) != 1 else ''} into {args.output}"):
        trees = render.render_all(profiles)
        for path in render.write_all(trees, out.claim()):
            log.info("  %s", path)
    return 0


def _image_files(name: str) -> dict:
    """An image and what disk.flashing_files writes beside it."""
    return {n: Kind.FILE for n in (name, f"{name}.sha256", f"{name}.bmap", f"{name}.zst")}


def _k3s_bundle(args, profiles):
    """The verified --k3s-bundle, which must be the version the racks want."""
    if not args.k3s_bundle:
        return None
    bundle = k3s_bundle.verify(args.k3s_bundle)
    wanted = {p.k3s.version for p in profiles}
    if wanted != {bundle.version}:
        raise BadInput(f"the k3s bundle {args.k3s_bundle} is {bundle.version}, but the racks want "
                       f"{', '.join(sorted(wanted))}",
                       hint=f"./build.py fetch-k3s {' '.join(sorted(wanted))} -o DIR")
    return bundle


def cmd_image(args) -> int:
    profiles = load_profiles(args.profiles)
    out = output.check(args.output, _image_files(jumphost.IMAGE_NAME))
    if os.geteuid() != 0:
        raise RackbootError("building an image needs root (mmdebstrap in root mode, unpacking the "
                            "root filesystem with its owners)", hint=f"sudo {' '.join(sys.argv)}")
    bundle = _k3s_bundle(args, profiles)
    options = jumphost.ImageOptions(output=out.claim(), release=args.release, cache_dir=args.cache_dir,
                                    use_cache=not args.no_cache, compress=args.compress, k3s_bundle=bundle)
    with progress.step(f"jumphost image for {', '.join(p.rack for p in profiles)}"):
        outputs = jumphost.build(profiles, options)
    for path in outputs:
        print(path)
    return 0


def cmd_fetch_k3s(args) -> int:
    versions = [a for a in args.profiles if k3s_bundle.VERSION_RE.fullmatch(a)]
    named = [a for a in args.profiles if a not in versions]
    versions += [p.k3s.version for p in load_profiles(named)] if named else []
    versions = sorted(set(versions))
    if args.pins and not args.pins.is_dir():    # not a silent "nothing pinned"
        raise BadInput(f"{args.pins}: no such directory (--pins)")
    pins = args.pins or k3s_pins.PINS
    mirror = k3s_fetch.mirror_url(args.mirror)
    out = output.check(args.output, {v: Kind.DIRECTORY for v in versions})
    out.claim()
    for version in versions:
        bundle = k3s_fetch.fetch(version, args.output, mirror=mirror, pins=pins)
        print(bundle)
        if args.pin:
            for pin in k3s_fetch.pin(bundle, pins):
                log.info("pinned %s (commit it)", pin)
    return 0


def _seed_inputs(args) -> dict[str, str]:
    """--agent-env and --credentials, checked before anything is written."""
    env = agent_env.parse(args.agent_env)
    seed.vendor_data(env, args.credentials)
    return env


def cmd_seed(args) -> int:
    profiles = load_profiles(args.profiles)
    env = _seed_inputs(args)
    out = output.check(args.output, {seed.seed_image_name(p): Kind.FILE for p in profiles})
    out.claim()
    for profile in profiles:
        print(seed.make_seed(profile, args.output, env, args.credentials))
    return 0


def cmd_boot(args) -> int:
    [profile] = _one_profile(args)
    disk = args.output / jumphost.IMAGE_NAME
    if not disk.exists():
        raise BadInput(f"{disk} does not exist", hint=f"build it first: ./build.py image {profile.source} -o {args.output}")
    env = _seed_inputs(args)
    writes = {f"boot-{profile.rack}": Kind.DIRECTORY}
    if not args.no_seed:
        writes[seed.seed_image_name(profile)] = Kind.FILE
    output.check(args.output, writes).claim()
    seed_image = None if args.no_seed else seed.make_seed(profile, args.output, env, args.credentials)
    files = qemu.BootFiles(args.output / f"boot-{profile.rack}")
    qemu.prepare(files)
    argv = qemu.qemu_argv(profile, disk, seed_image, files, kvm=args.kvm, ssh_port=args.ssh_port,
                          api_port=args.api_port, interactive=not args.until_report)
    log.info("booting %s (%s); status port log: %s", disk, "KVM" if args.kvm else "TCG", files.status_log)
    if not args.until_report:
        log.info("serial console follows; Ctrl-A X quits%s",
                 f"; ssh -p {args.ssh_port} rackboot@127.0.0.1" if args.ssh_port else "")
        os.execvp(argv[0], argv + ["-snapshot"])
    report = qemu.boot_until_report(argv + ["-snapshot"], files, args.timeout)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if not report.get("failed_units") and all(v == "done" for v in report["steps"].values()) else 1


def _one_profile(args):
    profiles = load_profiles(args.profiles)
    if len(profiles) != 1:
        raise BadInput(f"{args.verb} takes one rack; got {len(profiles)}")
    return profiles


def cmd_netboot(args) -> int:
    profiles = load_profiles(args.profiles)
    several = len(profiles) > 1
    out = output.check(args.output, {p.rack: Kind.DIRECTORY for p in profiles} if several else
                       {"tftp": Kind.DIRECTORY, "pi-root": Kind.DIRECTORY})
    if os.geteuid() != 0:
        raise RackbootError("building the Pi root filesystem needs root (mmdebstrap in root mode)",
                            hint=f"sudo {' '.join(sys.argv)}")
    bundles = {p.rack: _k3s_bundle(args, [p]) for p in profiles}
    out.claim()
    for profile in profiles:
        target = args.output / profile.rack if several else args.output
        tree, pi_root = netboot.build(profile, target, args.release, args.cache_dir, not args.no_cache,
                                      bundles[profile.rack])
        log.info("  %s: %d files, %d Pi directories", tree, sum(1 for p in tree.iterdir() if p.is_file()),
                 sum(1 for p in tree.iterdir() if p.is_dir()))
        log.info("  %s: the Pis' NFS root (export it read-only, as %s)", pi_root, profile.netboot.nfs_root)
    return 0


def cmd_sdcard(args) -> int:
    [profile] = _one_profile(args)
    sdcard.require_pis(profile)
    out = output.check(args.output, _image_files(sdcard.IMAGE_NAME))
    if os.geteuid() != 0:
        raise RackbootError("building the Pi root filesystem and its card image needs root (mmdebstrap in "
                            "root mode, unpacking the root filesystem with its owners)",
                            hint=f"sudo {' '.join(sys.argv)}")
    bundle = _k3s_bundle(args, [profile])
    with progress.step(f"SD-card image for the Pis of rack {profile.rack}"):
        outputs = sdcard.build(profile, out.claim(), args.release, args.cache_dir, not args.no_cache, bundle,
                               args.compress)
    for path in outputs:
        print(path)
    return 0


VERBS = {
    "check": (cmd_check, "validate rack profiles; report every problem as FILE: PATH: MESSAGE",
              False),
    "render": (cmd_render, "write every generated file (cloud-init, units, k3s, dnsmasq, NFS, "
                           "router hosts) into DIR/RACK/, mirroring where it lands", True),
    "image": (cmd_image, "build the hot-swappable x86-64 jumphost disk image serving these racks "
                         "(and, for racks with Pis, their netboot tree and NFS root): "
                         "DIR/jumphost.img with .sha256 and .bmap (needs root)", True),
    "seed": (cmd_seed, "write each rack's NoCloud seed (a CIDATA disk image) as DIR/seed-RACK.img", True),
    "fetch-k3s": (cmd_fetch_k3s, "download a k3s release's binaries and air-gap images (amd64, arm64) "
                                 "into DIR/VERSION/, verified against the release's checksums, and those "
                                 "against the ones pinned in image/k3s-pins/VERSION/ if any; each "
                                 "argument is a version (v1.31.4+k3s1) or a profile naming one", True),
    "netboot": (cmd_netboot, "write the Raspberry Pi TFTP tree a Pi 4 bootloader fetches: firmware, "
                             "config.txt, kernel, initramfs, device trees, cmdline.txt (NFS root), one "
                             "directory per Pi; DIR/tftp; and the Pis' shared NFS root, DIR/pi-root (DIR/RACK/... for "
                             "several racks; needs root)", True),
    "sdcard": (cmd_sdcard, "build the SD-card image for this rack's Pis that boot from a card instead of "
                           "the network: DIR/pi-sdcard.img (MBR: FAT boot partition, ext4 root that grows "
                           "to fill the card) with .sha256 and .bmap (needs root)", True),
    "boot": (cmd_boot, "boot DIR/jumphost.img in QEMU (UEFI, TCG) as a jumphost of this rack, "
                       "with its seed; changes are discarded", True),
}


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


def _verb_options(name: str, sub: argparse.ArgumentParser) -> None:
    if name in ("image", "netboot", "sdcard"):
        sub.add_argument("--release", type=_release, default="bookworm", help="Debian release (default: bookworm)")
        sub.add_argument("--cache-dir", type=Path, default=rootfs.default_cache_dir(), metavar="DIR",
                         help="root filesystem cache (default: %(default)s)")
        sub.add_argument("--no-cache", action="store_true", help="rebuild the root filesystem")
    if name in ("image", "sdcard"):
        sub.add_argument("--compress", action="store_true", help="also write a zstd copy (IMAGE.zst)")
    if name in ("image", "netboot", "sdcard"):
        sub.add_argument("--k3s-bundle", type=Path, metavar="DIR",
                         help="include this k3s bundle (from fetch-k3s: DIR is its VERSION directory; "
                              "the Pis' root gets its arm64 files); verified again first")
    if name == "fetch-k3s":
        sub.add_argument("--mirror", metavar="URL",
                         help=f"where releases are (default: ${k3s_fetch.MIRROR_ENV} or {k3s_fetch.DEFAULT_MIRROR})")
        sub.add_argument("--pin", action="store_true",
                         help="pin the fetched releases' checksum files (PINS/VERSION/sha256sum-ARCH.txt), to "
                              "commit; a pinned release is fetched only if the mirror serves exactly those")
        sub.add_argument("--pins", type=Path, metavar="PINS",
                         help="where pinned checksum files are (default: image/k3s-pins in this repository)")
    if name in ("seed", "boot"):
        sub.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                         help="environment for the first-boot agent, e.g. SECRET_MANAGER_EMULATOR_HOST=host:port "
                              "or RACKBOOT_SECRET_MANAGER_ENDPOINT=host (repeatable)")
        sub.add_argument("--credentials", type=Path, metavar="KEY.json",
                         help="a service account key for the agent (Application Default Credentials); "
                              "the seed then holds a credential")
    if name == "boot":
        sub.add_argument("--kvm", action="store_true",
                         help="use KVM instead of TCG (guests are known to hang under KVM on some hosts)")
        sub.add_argument("--no-seed", action="store_true",
                         help="boot without the rack's seed (the jumphost must then recognise its network)")
        sub.add_argument("--ssh-port", type=_port, metavar="PORT", help="forward 127.0.0.1:PORT to the guest's ssh")
        sub.add_argument("--api-port", type=_port, metavar="PORT",
                         help="forward 127.0.0.1:PORT to the guest's k3s API (kubeconfig: sudo cat "
                              "/etc/rancher/k3s/k3s.yaml on the guest, server port changed to PORT)")
        sub.add_argument("--until-report", action="store_true",
                         help="run headless until the agent reports, print the report, and stop")
        sub.add_argument("--timeout", type=_seconds, default=900, help="seconds to wait with --until-report")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="build.py", description=__doc__.split("\n\n")[0],
        epilog="Profiles are YAML files in rack-profiles/ (schema: rack-profiles/schema.json); "
               "a directory stands for every profile in it.")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (func, help_text, needs_output) in VERBS.items():
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        if name == "fetch-k3s":
            sub.add_argument("profiles", nargs="+", metavar="VERSION|PROFILE",
                             help="a k3s release tag, or a rack profile (or directory) naming one")
        else:
            sub.add_argument("profiles", nargs="+", metavar="PROFILE",
                             help="rack profile (YAML) or a directory of them")
        sub.add_argument("-o", "--output", type=Path, required=needs_output, metavar="DIR",
                         help="output directory" + (" (required): new, empty, or one rackboot made (it "
                                                    f"holds {output.MARKER})" if needs_output else ""))
        sub.add_argument("-v", "--verbose", action="store_true", help="log every command run")
        sub.add_argument("--debug", action="store_true", help="show tracebacks")
        _verb_options(name, sub)
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
