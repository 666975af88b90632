"""build.py bundle and push: their preflight and run, as image/verbs.py has
every other verb's (it imports these; image/cli.py finds them there)."""

from image import attach, bundle_build, bundle_seal, output, payload, push
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
    return Ready([profile], versions=[revision])


def run_push(args, ready: Ready) -> int:
    [profile], [revision] = ready.profiles, ready.versions
    return push.push(profile, push.Request(args.to, args.ssh_config, args.dry_run, args.rollback, revision))
