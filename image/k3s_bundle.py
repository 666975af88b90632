"""The k3s air-gap bundle: what an image carries so that k3s installs with no
network at first boot (a rack's jumphost may have none to the internet).

    DIR/VERSION/k3s, k3s-arm64                     the binaries
    DIR/VERSION/k3s-airgap-images-ARCH.tar.zst     the images k3s deploys itself
    DIR/VERSION/sha256sum-ARCH.txt                 k3s's own checksum files
    DIR/VERSION/bundle.json                        what was fetched, written last

`fetch` downloads the official release assets and verifies each against the
release's checksum files while it streams; `verify` checks a bundle again
before it goes into an image. Either fails naming the file, and leaves
nothing half-written.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from firstboot.errors import BadInput, RackbootError
from image import log as progress
from image.atomic import replace_directory

log = logging.getLogger("rackboot")

DEFAULT_MIRROR = "https://github.com/k3s-io/k3s/releases/download"
MIRROR_ENV = "RACKBOOT_K3S_MIRROR"
VERSION_RE = re.compile(r"v\d+\.\d+\.\d+(-rc\d+)?\+k3s\d+")
ARCHES = ("amd64", "arm64")
RETRY_DELAYS = (2, 5, 10)     # for transient network errors and HTTP 5xx
TIMEOUT = 60
CHUNK = 1 << 20


def binary_name(arch: str) -> str:
    return "k3s" if arch == "amd64" else f"k3s-{arch}"


def images_name(arch: str) -> str:
    return f"k3s-airgap-images-{arch}.tar.zst"


def checksums_name(arch: str) -> str:
    return f"sha256sum-{arch}.txt"


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise BadInput(f"{version!r} is not a k3s release tag such as v1.31.4+k3s1")
    return version


@dataclass(frozen=True)
class Bundle:
    version: str
    path: Path
    files: dict            # name -> sha256

    def binary(self, arch: str) -> Path:
        return self.path / binary_name(arch)

    def images(self, arch: str) -> Path:
        return self.path / images_name(arch)


def _parse_checksums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def fetch(version: str, destination: Path, mirror: str | None = None, arches=ARCHES) -> Path:
    """Download and verify VERSION's assets into destination/VERSION; return it."""
    check_version(version)
    mirror = (mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).rstrip("/")
    base = f"{mirror}/{urllib.parse.quote(version, safe='')}"
    final = destination / version
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=destination))
    try:
        with progress.step(f"fetch k3s {version} ({', '.join(arches)}) from {mirror}"):
            files = {}
            for arch in arches:
                sums_file = staging / checksums_name(arch)
                files[sums_file.name] = _download(f"{base}/{sums_file.name}", sums_file)
                sums = _parse_checksums(sums_file.read_text())
                for name in (binary_name(arch), images_name(arch)):
                    if name not in sums:
                        raise RackbootError(f"{name}: not listed in {sums_file.name} of {version}",
                                            hint="this release may not publish it; check the version")
                    files[name] = _download(f"{base}/{name}", staging / name, sums[name])
            for arch in arches:
                os.chmod(staging / binary_name(arch), 0o755)
            (staging / "bundle.json").write_text(json.dumps(
                {"version": version, "arches": list(arches), "files": files}, indent=2, sort_keys=True) + "\n")
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def verify(bundle_dir: Path, arches=ARCHES) -> Bundle:
    """Check every file the image needs against the release's checksums."""
    hint = "fetch it again: ./build.py fetch-k3s VERSION -o DIR"
    if not bundle_dir.is_dir():
        raise BadInput(f"{bundle_dir}: no such k3s bundle directory", hint=hint)
    manifest = bundle_dir / "bundle.json"
    version = json.loads(manifest.read_text())["version"] if manifest.exists() else bundle_dir.name
    if not VERSION_RE.fullmatch(str(version)):
        raise BadInput(f"{bundle_dir}: cannot tell the k3s version (no bundle.json, and the "
                       "directory is not named like v1.31.4+k3s1)", hint=hint)
    files = {}
    for arch in arches:
        sums_path = bundle_dir / checksums_name(arch)
        if not sums_path.exists():
            raise BadInput(f"{sums_path}: missing", hint=hint)
        sums = _parse_checksums(sums_path.read_text())
        for name in (binary_name(arch), images_name(arch)):
            path = bundle_dir / name
            if not path.exists():
                raise BadInput(f"{path}: missing", hint=hint)
            if name not in sums:
                raise BadInput(f"{path}: not listed in {sums_path.name}", hint=hint)
            got = _sha256(path)
            if got != sums[name]:
                raise BadInput(f"{path}: checksum mismatch (expected {sums[name]}, got {got})", hint=hint)
            files[name] = got
    return Bundle(str(version), bundle_dir, files)
