"""build.py bundle and push: their preflight and run, as image/verbs.py has
every other verb's (it imports these; image/cli.py finds them there)."""

from firstboot.errors import BadInput
from image import attach, bundle_build, bundle_seal, k3s_bundle, output, payload, push
from image.output import Kind
from image.verbs import Ready, _one_profile


def preflight_bundle(args) -> Ready:
    [profile] = _one_profile(args)
    payload.profile_files([profile])
    revision = bundle_seal.revision(profile, args.revision)
    return Ready([profile], output.check(args.output, {profile.rack: Kind.DIRECTORY}), versions=[revision])


def run_bundle(args, ready: Ready) -> int:
    [profile], [(number, commit)] = ready.profiles, ready.versions
    made = bundle_build.write(profile, ready.output.claim() / profile.rack, number, commit)
    print(f"{made.directory}: {made.describe()}")
    return 0


def preflight_push(args) -> Ready:
    [profile] = _one_profile(args)
    attach.check_ssh_config(args.ssh_config)
    push.check_host(args.to)
    revision = None if args.rollback else bundle_seal.revision(profile, args.revision)
    return Ready([profile], versions=[revision], k3s_bundles={profile.rack: _push_k3s_bundle(args, profile)})


def _push_k3s_bundle(args, profile):
    """The verified --k3s-bundle, which must be the profile's k3s version; None without one."""
    if not args.k3s_bundle:
        return None
    if args.rollback:
        raise BadInput("--k3s-bundle with --rollback: a rollback sends nothing",
                       hint="the previous revision's k3s is still on the jumphost")
    bundle = k3s_bundle.verify(args.k3s_bundle)
    if bundle.version != profile.k3s.version:
        raise BadInput(f"--k3s-bundle {args.k3s_bundle} is k3s {bundle.version}; rack {profile.rack}'s profile "
                       f"wants {profile.k3s.version} (k3s.version)",
                       hint="set k3s.version in the profile to the bundle's version, or push the bundle it wants")
    return bundle


def run_push(args, ready: Ready) -> int:
    [profile], [revision] = ready.profiles, ready.versions
    return push.push(profile, push.Request(args.to, args.ssh_config, args.dry_run, args.rollback, revision,
                                           ready.k3s_bundles[profile.rack]))
