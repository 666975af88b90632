"""A Pi's rack bundle, from its jumphost.

The Pis share one root, made with the image: the rack bundles in it are the
ones the image was built with. A push changes the jumphost's bundle
(firstboot/bundle_install.py), not theirs, and a Pi added by a push is in
none of them. So a netbooted Pi, before it identifies itself (rackboot-pi-access
and the agent both do, at every boot), asks its jumphost's join service for the
rack's bundle in use (GET /v1/bundle, firstboot/join.py) and keeps it as its
one pushed bundle (Layout.pushed_bundles/RACK/REVISION: in RAM on a
netbooted Pi). Identify then chooses among it and the image's as the
jumphost does: the newest that verifies.

Which jumphost: the one of the rack its boot files name (rackboot.rack= on
its kernel command line), at the address and join port the rack's model
gives.

Trust: as for the agent token and the boot files themselves (TFTP, NFS),
what answers at the jumphost's address on the rack network is taken as the
jumphost. The archive is unpacked as hostile input (firstboot/bundle_archive.py),
verified (firstboot/bundle.py), and must be the rack's own; one that fails
is never used. No answer in time, or a jumphost without the route (an older
image), leaves the Pi with the bundles it has, and a log line says so.
"""

import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from firstboot import bundle, bundle_archive, identify, join, rack_model
from firstboot.errors import BadInput
from firstboot.layout import Layout

log = logging.getLogger("rackboot.pi-bundle")

RETRY_SECONDS = 3


def url(profile) -> str:
    return f"http://{profile.jumphost.address}:{profile.netboot.join_port}{join.BUNDLE_PATH}"


def archive_for_pis(layout: Layout, rack: str) -> bytes | None:
    """What the join service serves: rack's bundle in use, packed; None when
    that is an image's tree from before bundles (it cannot be verified)."""
    chosen = bundle.choose(layout, rack)
    if chosen is None or chosen.revision == bundle.UNSEALED:
        return None
    return bundle_archive.pack(chosen.directory)


def _read_bounded(answer) -> bytes:
    data = answer.read(bundle_archive.MAX_ARCHIVE + 1)
    if len(data) > bundle_archive.MAX_ARCHIVE:
        raise bundle.BundleInvalid(f"the answer is larger than {bundle_archive.MAX_ARCHIVE} bytes")
    return data


def download(address: str, timeout: float, sleep=time.sleep) -> bytes | None:
    """The archive at address, retrying while nothing answers; None (logged)
    when the jumphost refuses, has no bundle to give, or does not answer in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(address, timeout=10) as answer:
                return _read_bounded(answer)
        except urllib.error.HTTPError as err:
            if err.code in (403, 404):
                log.warning("no rack bundle from %s (HTTP %s): using the bundles this Pi has", address, err.code)
                return None
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
        if time.monotonic() >= deadline:
            log.warning("no rack bundle from %s within %.0f s (last: %s): using the bundles this Pi has",
                        address, timeout, last)
            return None
        sleep(RETRY_SECONDS)


def _keep(layout: Layout, rack: str, staging: Path) -> bundle.Bundle:
    """The verified bundle in staging as rack's one pushed bundle here."""
    got = bundle.verify(staging, rack)
    target = layout.pushed_bundles / rack / str(got.revision)
    for old in bundle.pushed(layout, rack):       # the jumphost's bundle is the one: after a rollback too
        if old != target:
            shutil.rmtree(old)
    if target.is_dir():
        try:
            if bundle.verify(target, rack, got.revision).digest == got.digest:
                return got
        except bundle.BundleInvalid:
            pass
        shutil.rmtree(target)
    os.rename(staging, target)
    return bundle.verify(target, rack, got.revision)


def fetch(layout: Layout, rack: str, timeout: float, sleep=time.sleep) -> bundle.Bundle | None:
    """rack's bundle in use on its jumphost, kept here (or None, logged)."""
    profile = next((p for p in rack_model.read_all(layout) if p.rack == rack), None)
    if profile is None:
        log.warning("rack %s (the kernel command line's) is not among this Pi's rack bundles", rack)
        return None
    address = url(profile)
    data = download(address, timeout, sleep)
    if data is None:
        return None
    store = layout.pushed_bundles / rack
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store))
    try:
        bundle_archive.unpack(data, staging)
        got = _keep(layout, rack, staging)
        log.info("rack %s: revision %s from %s", rack, got.revision, address)
        return got
    except BadInput as err:
        log.warning("rack %s: the bundle from %s is not used: %s", rack, address, err)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def netbooted(cmdline: str) -> bool:
    """Whether the kernel's root is the jumphost's NFS root (not an SD card)."""
    return "root=/dev/nfs" in cmdline.split()


def refresh(layout: Layout, cmdline: str, timeout: float) -> None:
    """Before a netbooted Pi identifies itself: its rack's bundle from its
    jumphost. An SD-card Pi keeps the bundle its card was written with
    (build.py sdcard, from the profile that names it): a push reaches it
    with its next card."""
    rack = identify.rack_from_cmdline(cmdline)
    if rack and netbooted(cmdline):
        fetch(layout, rack, timeout)
