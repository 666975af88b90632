"""fetch-k3s: download a k3s release's air-gap bundle (image/k3s_bundle.py
describes it) from GitHub or a mirror, verifying each asset against the
release's checksum files while it streams, and those against the ones pinned
in this repository (image/k3s_pins.py). The bundle appears whole or not at
all (image/atomic.py); bundle.json, what was fetched, is written last.

A release channel (stable, latest, testing, v1.MINOR) is resolved as k3s's
install.sh does (get_release_version): request CHANNEL_URL/CHANNEL, follow
the channel server's redirect to the release's tag page and take the version
from the last path segment of the final URL.
"""

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from firstboot import checksums
from firstboot.errors import BadInput, RackbootError
from firstboot.k3s_bundle_files import ARCHES, binary_name, checksums_name, images_name
from image import atomic, k3s_pins, progress
from image.k3s_bundle import CHUNK, MANIFEST, VERSION_RE, check_version

log = logging.getLogger("rackboot")

DEFAULT_MIRROR = "https://github.com/k3s-io/k3s/releases/download"
MIRROR_ENV = "RACKBOOT_K3S_MIRROR"
DEFAULT_CHANNEL_URL = "https://update.k3s.io/v1-release/channels"     # install.sh's INSTALL_K3S_CHANNEL_URL
CHANNEL_URL_ENV = "RACKBOOT_K3S_CHANNEL_URL"
CHANNEL_RE = re.compile(r"stable|latest|testing|v1\.\d+")              # the channels k3s publishes
RETRY_DELAYS = (2, 5, 10)     # for transient network errors and HTTP 5xx
TIMEOUT = 60


def _download(url: str, target: Path, expected: str | None = None) -> str:
    """Stream url into target with progress; return its sha256. Retries transient errors."""
    name = target.name
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(target, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                digest, done, shown = hashlib.sha256(), 0, 0
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if total and done * 10 // total > shown:
                        shown = done * 10 // total
                        log.info("    %s: %d%% of %.1f MiB", name, shown * 10, total / 2**20)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or delay is None:
                raise RackbootError(f"{name}: HTTP {err.code} from {url}",
                                    hint="is that a k3s release with this asset? check the version "
                                         f"and the mirror (--mirror, {MIRROR_ENV})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if delay is None:
                reason = getattr(err, "reason", err)
                raise RackbootError(f"{name}: cannot download {url}: {reason}",
                                    hint=f"check the network, or point --mirror / {MIRROR_ENV} "
                                         "at a reachable copy of the release") from None
        log.info("    %s: attempt %d failed; retrying in %s s", name, attempt, delay)
        time.sleep(delay)
    got = digest.hexdigest()
    if expected is not None and got != expected:
        raise RackbootError(f"{name}: checksum mismatch (expected {expected}, got {got}) from {url}",
                            hint="the download is corrupt or the mirror serves other files; try again "
                                 "or use another mirror")
    return got


def _checked_url(given: str | None, default: str, where: str, what: str, allow_file: bool) -> str:
    """given (else default) without a trailing slash, if it is an http(s) URL
    with a host (or, when allow_file, a file: URL with a path)."""
    url = (given or default).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    local = allow_file and parts.scheme == "file" and parts.path
    if (any(c.isspace() or not c.isprintable() for c in url) or parts.query or parts.fragment
            or not (parts.scheme in ("http", "https") and parts.hostname or local)):
        shapes = "http://HOST/PATH, https://HOST/PATH" + (" or file:///PATH" if allow_file else "")
        raise BadInput(f"{where} {given!r}: not a {what} URL ({shapes})", hint=f"the default is {default}")
    return url


def mirror_url(mirror: str | None) -> str:
    """The mirror to fetch from (--mirror, else $RACKBOOT_K3S_MIRROR, else
    GitHub): an http(s) URL with a host, or a file: URL of a local copy."""
    given = mirror or os.environ.get(MIRROR_ENV)
    return _checked_url(given, DEFAULT_MIRROR, "--mirror" if mirror else f"${MIRROR_ENV}", "mirror",
                        allow_file=True)


def channel_url(url: str | None) -> str:
    """The channel server (--channel-url, else $RACKBOOT_K3S_CHANNEL_URL, else k3s's)."""
    given = url or os.environ.get(CHANNEL_URL_ENV)
    return _checked_url(given, DEFAULT_CHANNEL_URL, "--channel-url" if url else f"${CHANNEL_URL_ENV}",
                        "channel server", allow_file=False)


def resolve_channel(channel: str, server: str) -> str:
    """The release channel points to now, at server (from channel_url()).
    What the server answers decides a path on disk and URLs, so it must be
    exactly a k3s release tag: anything else is refused, not used."""
    if not CHANNEL_RE.fullmatch(channel):
        raise BadInput(f"{channel!r} is not a k3s release channel (stable, latest, testing or v1.MINOR)")
    url = f"{server}/{channel}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:    # follows redirects, as curl -L
            final = response.geturl()
    except urllib.error.HTTPError as err:
        raise RackbootError(f"k3s channel {channel}: HTTP {err.code} from {url}",
                            hint="is that a channel k3s publishes? check the name and the channel server "
                                 f"(--channel-url, {CHANNEL_URL_ENV})") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise RackbootError(f"k3s channel {channel}: cannot reach {url}: {getattr(err, 'reason', err)}",
                            hint=f"check the network, or point --channel-url / {CHANNEL_URL_ENV} at a "
                                 "reachable channel server, or name the version itself") from None
    parts = urllib.parse.urlsplit(final)
    segment = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    if parts.query or parts.fragment or not VERSION_RE.fullmatch(segment):    # install.sh: the URL's tail
        raise RackbootError(f"k3s channel {channel}: {url} led to {final[:200]!r}, whose last path segment "
                            "is not a k3s release tag such as v1.31.4+k3s1",
                            hint="the channel server is not answering as update.k3s.io does; "
                                 "name the version itself")
    log.info("k3s channel %s is %s (%s)", channel, segment, server)
    return segment


def _fetch_arch(base: str, version: str, arch: str, staging: Path, pins: Path) -> dict[str, str]:
    """arch's checksum file, binary and images into staging; name -> sha256."""
    sums_file = staging / checksums_name(arch)
    url = f"{base}/{sums_file.name}"
    files = {sums_file.name: _download(url, sums_file)}
    k3s_pins.check_download(pins, version, sums_file.name, sums_file.read_bytes(), url)
    try:
        sums = checksums.parse(sums_file.read_bytes(), url)
    except checksums.ChecksumFileError as err:
        raise RackbootError(str(err), hint="the mirror serves a damaged checksum file; "
                                           "try another mirror") from None
    for name in (binary_name(arch), images_name(arch)):
        if name not in sums:
            raise RackbootError(f"{name}: not listed in {sums_file.name} of {version}",
                                hint="this release may not publish it; check the version")
        files[name] = _download(f"{base}/{name}", staging / name, sums[name])
    os.chmod(staging / binary_name(arch), 0o755)
    return files


def fetch(version: str, destination: Path, mirror: str | None = None, arches=ARCHES,
          pins: Path = k3s_pins.PINS) -> Path:
    """Download and verify VERSION's assets into destination/VERSION; return it."""
    check_version(version)
    mirror = mirror_url(mirror)
    base = f"{mirror}/{urllib.parse.quote(version, safe='')}"
    with atomic.staged_directory(destination / version) as staging:
        with progress.step(f"fetch k3s {version} ({', '.join(arches)}) from {mirror}"):
            files = {}
            for arch in arches:
                files.update(_fetch_arch(base, version, arch, staging, pins))
            (staging / MANIFEST).write_text(json.dumps(
                {"version": version, "arches": list(arches), "files": files}, indent=2, sort_keys=True) + "\n")
    return destination / version


def pin(bundle_dir: Path, pins: Path = k3s_pins.PINS, arches=ARCHES) -> list[Path]:
    """Pin a fetched bundle's checksum files (fetch-k3s --pin); return the pins."""
    return [k3s_pins.write(pins, bundle_dir.name, checksums_name(arch), (bundle_dir / checksums_name(arch)).read_bytes())
            for arch in arches]
