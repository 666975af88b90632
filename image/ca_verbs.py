"""build.py make-ca: its preflight and run, as image/verbs.py has every
other verb's (it imports these; image/cli.py finds them there). The CA is
image/cluster_ca.py's."""

import os

from firstboot.errors import BadInput
from image import cluster_ca, output
from image.verbs import Ready, _one_profile


def preflight_make_ca(args) -> Ready:
    [profile] = _one_profile(args)
    checked = output.check(args.output)
    if os.path.lexists(args.output / profile.rack):
        raise BadInput(f"{args.output / profile.rack}: already there; make-ca never replaces a CA (its root key "
                       "would be lost)", hint="name another output directory")
    return Ready([profile], checked)


def run_make_ca(args, ready: Ready) -> int:
    [profile] = ready.profiles
    authority = cluster_ca.make(profile.rack)
    directory = ready.output.claim() / profile.rack
    directory.mkdir(mode=0o700)
    for name, content in ((cluster_ca.ARCHIVE, authority.archive), *authority.offline):
        descriptor = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
    print(f"{directory / cluster_ca.ARCHIVE}: rack {profile.rack}'s cluster CA; store it (berglas create "
          f"BUCKET/OBJECT @FILE --key KMS-KEY, or gcloud secrets create NAME --data-file=FILE) and name it as "
          f"k3s.ca in the profile. Keep {directory}/root-ca.* and intermediate-ca.* offline.")
    return 0
