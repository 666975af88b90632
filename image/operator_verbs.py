"""build.py clusters, attach and router: the operator's verbs, their
preflight and run, as image/verbs.py has every other verb's (it imports
these; image/cli.py finds them there)."""

from firstboot.profile import load_profiles
from image import attach, clusters, router
from image.verbs import Ready, _one_profile


# ------------------------------------------------------------------ clusters, attach


def preflight_clusters(args) -> Ready:
    profiles = load_profiles(args.profiles)
    clusters.require_attach_ports(profiles)
    clusters.check_destination(args.output)
    return Ready(profiles)


def run_clusters(args, ready: Ready) -> int:
    clusters.write(args.output, ready.profiles)
    return 0


def preflight_attach(args) -> Ready:
    attach.check_ssh_config(args.ssh_config)
    return Ready([attach.find_rack(args.profiles, args.rack)])


def run_attach(args, ready: Ready) -> int:
    [profile] = ready.profiles
    return attach.attach(profile, args.command, ssh_config=args.ssh_config)


# ------------------------------------------------------------------ router


def preflight_router(args) -> Ready:
    attach.check_ssh_config(args.ssh_config)
    [profile] = _one_profile(args)
    router.check_request(profile, args)
    return Ready([profile])


def run_router(args, ready: Ready) -> int:
    return router.run(router.check_request(ready.profiles[0], args))     # checked by preflight: pure, fast
