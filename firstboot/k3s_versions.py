"""Kubernetes' version skew policy for upgrades, on the jumphost: its k3s
server (kube-apiserver and the datastore's schema) moves one minor version at
a time, never skipping one (v1.31 -> v1.33) and never back to an older minor
(https://kubernetes.io/releases/version-skew-policy/). Patch releases of the
same minor and the next minor proceed.

What is installed is what the installed binary says it is (`k3s --version`,
first line `k3s version VERSION (COMMIT)`), not a record rackboot kept: a
record could be older than the binary, the binary is what runs.
"""

import re
from pathlib import Path

from firstboot.commands import run
from firstboot.errors import BadInput, RackbootError
from firstboot.k3s_bundle_files import VERSION_RE

POLICY = "Kubernetes' version skew policy allows one minor version at a time, upwards"
VERSION_TIMEOUT = 120        # seconds; k3s --version does nothing but print
SAID_RE = re.compile(r"k3s version (\S+) ")


def minor(version: str) -> tuple[int, int]:
    """(major, minor) of a k3s release tag such as v1.31.4+k3s1."""
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"{version!r} is not a k3s release tag")
    major, minor_number = version[1:].split(".")[:2]
    return int(major), int(minor_number)


def installed_version(binary: Path) -> str | None:
    """The version the installed k3s binary says it is; None if there is none."""
    if not binary.exists():
        return None
    result = run([binary, "--version"], capture=True, timeout=VERSION_TIMEOUT,
                 hint="the installed k3s binary does not run; reflash the jumphost or replace it by hand")
    first = (result.stdout.splitlines() or [""])[0]
    said = SAID_RE.match(first)
    if not said or not VERSION_RE.fullmatch(said.group(1)):
        raise RackbootError(f"{binary}: `k3s --version` printed {first[:200]!r}, not `k3s version VERSION (...)`",
                            hint="the installed k3s binary is not one rackboot knows; reflash the jumphost")
    return said.group(1)


def check_upgrade(installed: str | None, wanted: str) -> None:
    """Refuse moving the k3s server from installed to wanted across a minor
    skip or to an older minor; nothing installed is a first install."""
    if installed is None:
        return
    (old_major, old_minor), (new_major, new_minor) = minor(installed), minor(wanted)
    if old_major == new_major and new_minor - old_minor in (0, 1):
        return
    step = f"v{old_major}.{old_minor + 1}"
    if (new_major, new_minor) > (old_major, old_minor):
        hint = (f"upgrade one minor at a time: first an image or bundle of {step} "
                f"(./build.py fetch-k3s {step}), run the agent, then the next minor")
    else:
        hint = (f"k3s does not go back to an older minor; set the rack's k3s.version to a "
                f"v{old_major}.{old_minor} release or {step}")
    raise BadInput(f"k3s {installed} is installed and this image has {wanted}: {POLICY}, so the jumphost's "
                   f"k3s server cannot move from v{old_major}.{old_minor} to v{new_major}.{new_minor}; "
                   "the running k3s is left as it is", hint=hint)
