"""A Pi runs the k3s its jumphost serves ("the Pis follow").

The Pis' shared root carries the k3s versions the image was built with; a
version pushed to the jumphost later (build.py push --k3s-bundle) is in no
Pi's root. So a Pi's k3s step asks its jumphost's join service which version
the k3s server runs (GET /v1/k3s: {"version": V}; the jumphost records it
once its server is ready, firstboot/k3s_store.py), takes V's files for its
architecture (arm64) from its own image if it has them, or else from the
join service (GET /v1/k3s/V/NAME, NAME one of sha256sum-arm64.txt,
k3s-arm64, k3s-airgap-images-arm64.tar.zst) into its pushed store, checked
against V's checksum file, and installs V. So a Pi never runs a newer k3s than its
server (Kubernetes' skew policy: no kubelet newer than its API server), and a
jumphost upgraded in place brings its Pis along: the Pis' watcher
(firstboot/pi_watch.py) runs their agent again when the version they run is
not the one served (behind()).

A jumphost without the route (an older image: 404) leaves a Pi on its rack
bundle's version, as before. Trust is that of the token and the boot files:
whoever answers at the jumphost's address is taken as the jumphost (it serves
the Pis' root too); the checksums catch damage, not a forged jumphost.
"""

import json
import logging
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

from firstboot import k3s_bundle_files as bundle_files
from firstboot import k3s, k3s_store, state
from firstboot.errors import RackbootError
from firstboot.layout import Layout

log = logging.getLogger("rackboot.k3s-follow")

PATH = "/v1/k3s"
SERVED_NAMES = frozenset(name for arch in bundle_files.ARCHES for name in bundle_files.arch_files(arch))
MAX_FILE = 4 << 30            # a k3s binary is ~70 MB, its images ~200 MB
RETRY_SECONDS = 5
TEXT = "text/plain"


# ------------------------------------------------------------ the jumphost's side
def answer(layout: Layout, path: str) -> tuple[int, bytes | Path, str]:
    """The join service's answer to GET path: PATH, or PATH/VERSION/NAME of
    the served version's files (nothing else of the machine's)."""
    served = k3s_store.served(layout)
    if path == PATH:
        if served is None:
            return 503, b"the jumphost's k3s server is not ready yet\n", TEXT
        return 200, json.dumps({"version": served}).encode() + b"\n", "application/json"
    parts = path[len(PATH):].split("/")
    if len(parts) != 3 or parts[0] or parts[2] not in SERVED_NAMES:
        return 404, b"not found\n", TEXT
    if parts[1] != served:      # served is a checked version: nothing else reaches a path
        return 404, f"this jumphost's k3s server runs {served or 'nothing yet'}\n".encode(), TEXT
    directory = k3s_store.locate(layout, served)
    file = directory / parts[2] if directory else None
    if file is None or not stat.S_ISREG(os.lstat(file).st_mode if os.path.lexists(file) else 0):
        return 404, f"k3s {served} has no {parts[2]} here\n".encode(), TEXT
    return 200, file, "application/octet-stream"


# ------------------------------------------------------------ the Pi's side
def base_url(profile) -> str:
    return f"http://{profile.jumphost.address}:{profile.netboot.join_port}{PATH}"


def ask(url: str) -> tuple[str | None, str]:
    """One question to the join service at url (base_url): (the served
    version, "") or (None, why not); why is "absent" for a jumphost without
    the route."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            version = json.loads(reply.read(4096)).get("version")
    except urllib.error.HTTPError as err:
        return None, "absent" if err.code == 404 else f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return None, str(getattr(err, "reason", err))
    except (ValueError, AttributeError):
        return None, "an answer that is not {\"version\": ...}"
    if not isinstance(version, str) or not bundle_files.VERSION_RE.fullmatch(version):
        return None, f"an answer naming no k3s version ({str(version)[:80]!r})"
    return version, ""


def served_version(profile, timeout: float, sleep=time.sleep) -> str | None:
    """The version the jumphost's server runs, waiting for it to be ready;
    None from a jumphost that does not say (an older image)."""
    deadline = time.monotonic() + timeout
    while True:
        version, why = ask(base_url(profile))
        if version or why == "absent":
            return version
        if time.monotonic() >= deadline:
            raise RackbootError(f"the jumphost ({base_url(profile)}) did not say which k3s it runs within "
                                f"{timeout:.0f} s; last: {why}",
                                hint="is the jumphost's k3s server up? On it: python3 -m firstboot status")
        sleep(RETRY_SECONDS)


def _fetch_file(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as reply, open(target, "xb") as out:
            copied = 0
            for chunk in iter(lambda: reply.read(bundle_files.CHUNK), b""):
                copied += len(chunk)
                if copied > MAX_FILE:
                    raise RackbootError(f"{url}: larger than {MAX_FILE} bytes; not a k3s file")
                out.write(chunk)
    except urllib.error.HTTPError as err:
        raise RackbootError(f"{url}: HTTP {err.code} ({err.read(200).decode(errors='replace').strip()})",
                            hint="the jumphost's k3s changed meanwhile, or lacks the file; the agent tries again") \
            from None
    except (urllib.error.URLError, OSError) as err:
        raise RackbootError(f"{url}: {getattr(err, 'reason', err)}", hint="the agent tries again") from None


def download(layout: Layout, profile, version: str, arch: str) -> Path:
    """version's files for arch from the jumphost into the pushed store, verified."""
    work = k3s_store.staging(layout)
    try:
        for name in reversed(bundle_files.arch_files(arch)):       # the checksum file first
            _fetch_file(f"{base_url(profile)}/{version}/{name}", work / name)
        try:
            return k3s_store.seal(layout, work, version, (arch,))
        except bundle_files.BundleFileError as err:
            raise RackbootError(f"k3s {version} from the jumphost: {err}",
                                hint="damaged on the way, or on the jumphost; the agent tries again") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def version_to_run(layout: Layout, profile, wanted: str, timeout: float) -> str:
    """The k3s version this Pi installs: its jumphost's (fetched when this Pi
    does not have it), or wanted (its rack bundle's) from a jumphost that
    does not say."""
    served = served_version(profile, timeout)
    if served is None:
        log.info("the jumphost does not say which k3s it runs (an older image): installing %s", wanted)
        return wanted
    if k3s_store.locate(layout, served) is None:
        log.info("k3s %s: from the jumphost (%s)", served, base_url(profile))
        download(layout, profile, served, k3s.machine_arch())
    k3s_store.keep_only(layout, served)
    return served


def behind(layout: Layout) -> str | None:
    """Why this Pi's agent must run again to follow its jumphost's k3s, or
    None: its last run finished, installing another version than the one the
    jumphost now serves (asked once, no waiting, where that run asked:
    its k3s step's "follows")."""
    steps = state.load(layout).get("steps") or {}
    if (steps.get("report") or {}).get("outcome") != "done":
        return None                      # a run at work, or none yet: not the watcher's business
    result = (steps.get("k3s") or {}).get("result") or {}
    running, url = result.get("version"), result.get("follows")
    if not (isinstance(running, str) and isinstance(url, str) and url.startswith("http://")):
        return None
    served = ask(url)[0]
    if served and served != running:
        return f"the jumphost's k3s runs {served}, this Pi's {running}"
    return None
