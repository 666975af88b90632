"""What each of build.py's verbs (image/cli.py declares them) checks and does.

preflight_VERB(args) checks every input the verb needs, before any slow step
(rootfs build, mmdebstrap, pip) and without writing anything: the profiles,
what of them goes into an image (profiles and manifests inside one directory,
units that render the same for every rack of one image, Pis where Pis are
built), the output directory (image/output.py), the k3s bundle. Bad input so
exits 2 in well under a second. It returns what run_VERB(args, ready) needs;
run_VERB claims the output directory and does the work.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import BadInput
from firstboot.profile import RackProfile, load_profiles
from image import (agent_env, jumphost, k3s_bundle, k3s_fetch, k3s_pins, netboot, output, payload,
                   progress, qemu, render, sdcard, seed)
from image.output import Kind, Output

log = logging.getLogger("rackboot")


@dataclass(frozen=True)
class Ready:
    """What a verb's preflight found, for its run."""
    profiles: list[RackProfile]
    output: Output | None = None
    k3s_bundles: dict = field(default_factory=dict)   # rack -> verified k3s_bundle.Bundle, or None
    agent_env: dict = field(default_factory=dict)     # --agent-env, checked
    versions: list[str] = field(default_factory=list)  # fetch-k3s: the k3s versions to fetch
    mirror: str = ""                                  # fetch-k3s: the mirror's URL, checked
    pins: Path | None = None                          # fetch-k3s: the pinned checksum files


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _one_profile(args) -> list[RackProfile]:
    profiles = load_profiles(args.profiles)
    if len(profiles) != 1:
        raise BadInput(f"{args.verb} takes one rack; got {len(profiles)}")
    return profiles


def _image_files(name: str) -> dict:
    """An image and what disk.flashing_files writes beside it."""
    return {n: Kind.FILE for n in (name, f"{name}.sha256", f"{name}.bmap", f"{name}.zst")}


def _k3s_bundles(args, profiles: list[RackProfile]) -> dict:
    """rack -> its verified k3s bundle among the --k3s-bundle DIRs (none
    given: None each), which must be one per version the racks want, no more."""
    if not args.k3s_bundle:
        return {p.rack: None for p in profiles}
    wanted = {p.k3s.version for p in profiles}
    hint = f"./build.py fetch-k3s {' '.join(sorted(wanted))} -o DIR, and one --k3s-bundle DIR/VERSION each"
    bundles = {}
    for path in args.k3s_bundle:
        bundle = k3s_bundle.verify(path)
        if bundle.version not in wanted:
            raise BadInput(f"the k3s bundle {path} is {bundle.version}, but the racks want "
                           f"{', '.join(sorted(wanted))}", hint=hint)
        if bundle.version in bundles:
            raise BadInput(f"the k3s bundles {bundles[bundle.version].path} and {path} are both "
                           f"{bundle.version}", hint=hint)
        bundles[bundle.version] = bundle
    for version in sorted(wanted - set(bundles)):
        racks = ", ".join(p.rack for p in profiles if p.k3s.version == version)
        raise BadInput(f"no --k3s-bundle of {version}, which {racks} want", hint=hint)
    return {p.rack: bundles[p.k3s.version] for p in profiles}


def _check_pi_root(profiles: list[RackProfile], rendered: dict[str, render.RenderedTree]) -> None:
    """What netboot.write_pi_root refuses: the profiles' files outside their
    directory, Pi units that differ between the racks with Pis."""
    payload.profile_files(profiles)
    payload.shared_units({p.rack: rendered[p.rack] for p in profiles if p.pis}, "pi", netboot.PI_UNITS)


# ------------------------------------------------------------------ check, render


def preflight_check(args) -> Ready:
    return Ready(load_profiles(args.profiles))


def run_check(args, ready: Ready) -> int:
    for profile in ready.profiles:
        print(f"{profile.source}: ok: rack {profile.rack}, jumphost {profile.jumphost.hostname}, "
              f"{_plural(len(profile.pis), 'Pi')}, {_plural(len(profile.manifests), 'manifest file')}")
    return 0


def preflight_render(args) -> Ready:
    profiles = load_profiles(args.profiles)
    return Ready(profiles, output.check(args.output, {p.rack: Kind.DIRECTORY for p in profiles}))


def run_render(args, ready: Ready) -> int:
    with progress.step(f"render {_plural(len(ready.profiles), 'rack')} into {args.output}"):
        trees = render.render_all(ready.profiles)
        for path in render.write_all(trees, ready.output.claim()):
            log.info("  %s", path)
    return 0


# ------------------------------------------------------------------ image, netboot, sdcard


def preflight_image(args) -> Ready:
    profiles = load_profiles(args.profiles)
    payload.profile_files(profiles)
    rendered = render.render_all(profiles)
    payload.shared_units(rendered, "jumphost", jumphost.UNITS)
    if any(p.pis for p in profiles):
        _check_pi_root(profiles, rendered)
    out = output.check(args.output, _image_files(jumphost.IMAGE_NAME))
    return Ready(profiles, out, _k3s_bundles(args, profiles))


def run_image(args, ready: Ready) -> int:
    options = jumphost.ImageOptions(output=ready.output.claim(), release=args.release, cache_dir=args.cache_dir,
                                    use_cache=not args.no_cache, compress=args.compress,
                                    k3s_bundles=tuple({b.version: b for b in ready.k3s_bundles.values() if b}.values()))
    with progress.step(f"jumphost image for {', '.join(p.rack for p in ready.profiles)}"):
        outputs = jumphost.build(ready.profiles, options)
    for path in outputs:
        print(path)
    return 0


def preflight_netboot(args) -> Ready:
    profiles = load_profiles(args.profiles)
    for profile in profiles:     # one Pi root per rack
        _check_pi_root([profile], {profile.rack: render.render_rack(profile)})
    several = len(profiles) > 1
    out = output.check(args.output, {p.rack: Kind.DIRECTORY for p in profiles} if several else
                       {"tftp": Kind.DIRECTORY, "pi-root": Kind.DIRECTORY})
    return Ready(profiles, out, {p.rack: _k3s_bundles(args, [p])[p.rack] for p in profiles})


def run_netboot(args, ready: Ready) -> int:
    ready.output.claim()
    several = len(ready.profiles) > 1
    for profile in ready.profiles:
        target = args.output / profile.rack if several else args.output
        tree, pi_root = netboot.build(profile, target, args.release, args.cache_dir, not args.no_cache,
                                      ready.k3s_bundles[profile.rack])
        log.info("  %s: %d files, %d Pi directories", tree, sum(1 for p in tree.iterdir() if p.is_file()),
                 sum(1 for p in tree.iterdir() if p.is_dir()))
        log.info("  %s: the Pis' NFS root (export it read-only, as %s)", pi_root, profile.netboot.nfs_root)
    return 0


def preflight_sdcard(args) -> Ready:
    [profile] = _one_profile(args)
    sdcard.require_pis(profile)
    _check_pi_root([profile], {profile.rack: render.render_rack(profile)})
    out = output.check(args.output, _image_files(sdcard.IMAGE_NAME))
    return Ready([profile], out, _k3s_bundles(args, [profile]))


def run_sdcard(args, ready: Ready) -> int:
    [profile] = ready.profiles
    with progress.step(f"SD-card image for the Pis of rack {profile.rack}"):
        outputs = sdcard.build(profile, ready.output.claim(), args.release, args.cache_dir, not args.no_cache,
                               ready.k3s_bundles[profile.rack], args.compress)
    for path in outputs:
        print(path)
    return 0


# ------------------------------------------------------------------ fetch-k3s


def preflight_fetch_k3s(args) -> Ready:
    versions = [a for a in args.profiles if k3s_bundle.VERSION_RE.fullmatch(a)]
    channels = [a for a in args.profiles if k3s_fetch.CHANNEL_RE.fullmatch(a)]
    named = [a for a in args.profiles if a not in versions and a not in channels]
    profiles = load_profiles(named) if named else []
    if args.pins and not args.pins.is_dir():    # not a silent "nothing pinned"
        raise BadInput(f"{args.pins}: no such directory (--pins)")
    mirror = k3s_fetch.mirror_url(args.mirror)
    server = k3s_fetch.channel_url(args.channel_url)
    versions += [k3s_fetch.resolve_channel(channel, server) for channel in channels]
    versions = sorted(set(versions + [p.k3s.version for p in profiles]))
    out = output.check(args.output, {v: Kind.DIRECTORY for v in versions})
    return Ready(profiles, out, versions=versions, mirror=mirror, pins=args.pins or k3s_pins.PINS)


def run_fetch_k3s(args, ready: Ready) -> int:
    ready.output.claim()
    for version in ready.versions:
        bundle = k3s_fetch.fetch(version, args.output, mirror=ready.mirror, pins=ready.pins)
        print(bundle)
        if args.pin:
            for pin in k3s_fetch.pin(bundle, ready.pins):
                log.info("pinned %s (commit it)", pin)
    return 0


# ------------------------------------------------------------------ seed, boot


def _seed_inputs(args) -> dict[str, str]:
    """--agent-env and --credentials, checked before anything is written."""
    env = agent_env.parse(args.agent_env)
    seed.vendor_data(env, args.credentials)
    return env


def preflight_seed(args) -> Ready:
    profiles = load_profiles(args.profiles)
    env = _seed_inputs(args)
    out = output.check(args.output, {seed.seed_image_name(p): Kind.FILE for p in profiles})
    return Ready(profiles, out, agent_env=env)


def run_seed(args, ready: Ready) -> int:
    ready.output.claim()
    for profile in ready.profiles:
        print(seed.make_seed(profile, args.output, ready.agent_env, args.credentials))
    return 0


def preflight_boot(args) -> Ready:
    [profile] = _one_profile(args)
    disk = args.output / jumphost.IMAGE_NAME
    if not disk.exists():
        raise BadInput(f"{disk} does not exist",
                       hint=f"build it first: ./build.py image {profile.source} -o {args.output}")
    env = _seed_inputs(args)
    writes = {f"boot-{profile.rack}": Kind.DIRECTORY}
    if not args.no_seed:
        writes[seed.seed_image_name(profile)] = Kind.FILE
    return Ready([profile], output.check(args.output, writes), agent_env=env)


def run_boot(args, ready: Ready) -> int:
    [profile] = ready.profiles
    ready.output.claim()
    disk = args.output / jumphost.IMAGE_NAME
    seed_image = None if args.no_seed else seed.make_seed(profile, args.output, ready.agent_env, args.credentials)
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


# bundle and push: image/bundle_verbs.py (imported last: it uses Ready and _one_profile from here)
from image import bundle_verbs  # noqa: E402
preflight_bundle, run_bundle = bundle_verbs.preflight_bundle, bundle_verbs.run_bundle
preflight_push, run_push = bundle_verbs.preflight_push, bundle_verbs.run_push
from image import ca_verbs  # noqa: E402   (make-ca; the same reason)
preflight_make_ca, run_make_ca = ca_verbs.preflight_make_ca, ca_verbs.run_make_ca
from image import operator_verbs  # noqa: E402   (clusters, attach, router; the same reason)
preflight_clusters, run_clusters = operator_verbs.preflight_clusters, operator_verbs.run_clusters
preflight_attach, run_attach = operator_verbs.preflight_attach, operator_verbs.run_attach
preflight_router, run_router = operator_verbs.preflight_router, operator_verbs.run_router
