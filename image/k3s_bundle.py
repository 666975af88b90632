"""The k3s air-gap bundle: what an image carries so that k3s installs with no
network at first boot (a rack's jumphost may have none to the internet).

    DIR/VERSION/k3s, k3s-arm64                     the binaries
    DIR/VERSION/k3s-airgap-images-ARCH.tar.zst     the images k3s deploys itself
    DIR/VERSION/sha256sum-ARCH.txt                 k3s's own checksum files
    DIR/VERSION/bundle.json                        what was fetched, written last

`fetch` downloads the official release assets and verifies each against the
release's checksum files while it streams (and the checksum files against
the ones pinned in this repository, image/k3s_pins.py); `verify` checks a
bundle again before it goes into an image; `copy_verified` copies one of its
files into an image, checking the bytes it copies. Either fails naming the
file, and leaves nothing half-written.

A bundle is refused, not followed, when it holds anything but regular files
(a symbolic link could pull any file of the build host into the image), and
when its bundle.json is malformed or lies about the version: it must name
the directory's version and the files' checksums, and the binary for the
build host's architecture must say the same version (image/k3s_version.py).
"""

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from firstboot import checksums, files
from firstboot.errors import BadInput, RackbootError
from image import k3s_pins, k3s_version
from image import log as progress
from image.atomic import replace_directory

log = logging.getLogger("rackboot")

DEFAULT_MIRROR = "https://github.com/k3s-io/k3s/releases/download"
MIRROR_ENV = "RACKBOOT_K3S_MIRROR"
VERSION_RE = re.compile(r"v\d+\.\d+\.\d+(-rc\d+)?\+k3s\d+")
ARCHES = ("amd64", "arm64")
MANIFEST = "bundle.json"
MANIFEST_MAX_BYTES = 1 << 16
RETRY_DELAYS = (2, 5, 10)     # for transient network errors and HTTP 5xx
TIMEOUT = 60
CHUNK = 1 << 20
REFETCH_HINT = "fetch it again: ./build.py fetch-k3s VERSION -o DIR"


def binary_name(arch: str) -> str:
    return "k3s" if arch == "amd64" else f"k3s-{arch}"


def images_name(arch: str) -> str:
    return f"k3s-airgap-images-{arch}.tar.zst"


def checksums_name(arch: str) -> str:
    return f"sha256sum-{arch}.txt"


def arch_files(arch: str) -> tuple[str, str, str]:
    return binary_name(arch), images_name(arch), checksums_name(arch)


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise BadInput(f"{version!r} is not a k3s release tag such as v1.31.4+k3s1")
    return version


@dataclass(frozen=True)
class Bundle:
    version: str
    path: Path
    files: dict            # name -> sha256 of every verified file (and bundle.json): what an image gets

    def binary(self, arch: str) -> Path:
        return self.path / binary_name(arch)

    def images(self, arch: str) -> Path:
        return self.path / images_name(arch)

    def names(self, arch: str | None = None) -> list[str]:
        """The files an image gets: all, or those of one architecture."""
        return sorted(self.files) if arch is None else list(arch_files(arch))


# ------------------------------------------------------------------ fetch


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


def mirror_url(mirror: str | None) -> str:
    """The mirror to fetch from (--mirror, else $RACKBOOT_K3S_MIRROR, else
    GitHub): an http(s) URL with a host, or a file: URL of a local copy."""
    given = mirror or os.environ.get(MIRROR_ENV)
    url = (given or DEFAULT_MIRROR).rstrip("/")
    where = "--mirror" if mirror else f"${MIRROR_ENV}"
    parts = urllib.parse.urlsplit(url)
    if (any(c.isspace() or not c.isprintable() for c in url) or parts.query or parts.fragment
            or not (parts.scheme in ("http", "https") and parts.hostname or parts.scheme == "file" and parts.path)):
        raise BadInput(f"{where} {given!r}: not a mirror URL (http://HOST/PATH, https://HOST/PATH or file:///PATH)",
                       hint=f"the default is {DEFAULT_MIRROR}")
    return url


def fetch(version: str, destination: Path, mirror: str | None = None, arches=ARCHES,
          pins: Path = k3s_pins.PINS) -> Path:
    """Download and verify VERSION's assets into destination/VERSION; return it."""
    check_version(version)
    mirror = mirror_url(mirror)
    base = f"{mirror}/{urllib.parse.quote(version, safe='')}"
    final = destination / version
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=destination))
    try:
        with progress.step(f"fetch k3s {version} ({', '.join(arches)}) from {mirror}"):
            files = {}
            for arch in arches:
                sums_file = staging / checksums_name(arch)
                url = f"{base}/{sums_file.name}"
                files[sums_file.name] = _download(url, sums_file)
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
            for arch in arches:
                os.chmod(staging / binary_name(arch), 0o755)
            (staging / MANIFEST).write_text(json.dumps(
                {"version": version, "arches": list(arches), "files": files}, indent=2, sort_keys=True) + "\n")
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


# ------------------------------------------------------------------ verify


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at path (not through a link), at most limit."""
    try:
        return files.read_regular(path, limit, follow_symlinks=False)
    except files.NotRegularFile as err:
        raise BadInput(f"{path}: {err.kind}, not a regular file", hint=REFETCH_HINT) from None
    except files.TooLarge:
        raise BadInput(f"{path}: larger than {limit} bytes", hint=REFETCH_HINT) from None
    except OSError as err:
        raise BadInput(f"{path}: cannot read it ({err.strerror})", hint=REFETCH_HINT) from None


def _only_regular_files(bundle_dir: Path) -> list[str]:
    """Every entry's name; anything but a regular file is refused, not followed."""
    names = []
    try:
        with os.scandir(bundle_dir) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as err:
        raise BadInput(f"{bundle_dir}: cannot list the k3s bundle ({err.strerror})", hint=REFETCH_HINT) from None
    for entry in entries:
        if entry.is_symlink():
            raise BadInput(f"{bundle_dir / entry.name}: a symbolic link; a k3s bundle holds regular files "
                           "only (a link would pull whatever it points at into the image)", hint=REFETCH_HINT)
        if not entry.is_file(follow_symlinks=False):
            kind = "a directory" if entry.is_dir(follow_symlinks=False) else "not a regular file"
            raise BadInput(f"{bundle_dir / entry.name}: {kind}; a k3s bundle holds regular files only",
                           hint=REFETCH_HINT)
        names.append(entry.name)
    return names


@dataclass(frozen=True)
class Manifest:
    """bundle.json, as fetch-k3s writes it."""
    version: str
    arches: tuple[str, ...]
    files: dict          # name -> sha256


def _manifest_problem(document) -> str | None:
    if not isinstance(document, dict):
        return f"not a JSON object but {type(document).__name__}"
    unknown = sorted(set(document) - {"version", "arches", "files", "standin"})
    if unknown:
        return f"unknown key {unknown[0]!r} (bundle.json has version, arches, files)"
    for key in ("version", "arches", "files"):
        if key not in document:
            return f"{key}: missing"
    version, arches, files = document["version"], document["arches"], document["files"]
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        return f"version: {version!r} is not a k3s release tag such as v1.31.4+k3s1"
    if (not isinstance(arches, list) or not arches or any(a not in ARCHES for a in arches)
            or len(set(arches)) != len(arches)):
        return f"arches: {arches!r} is not a list of distinct architectures out of {', '.join(ARCHES)}"
    if not isinstance(files, dict) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                                              for v in files.values()):
        return "files: not a mapping of file names to sha256 checksums (64 lower-case hex digits)"
    expected = {name for arch in arches for name in arch_files(arch)}
    if set(files) != expected:
        odd = sorted(set(files) ^ expected)[0]
        return f"files: {'lists' if odd in files else 'does not list'} {odd!r} (a bundle of {', '.join(arches)} " \
               f"has exactly {', '.join(sorted(expected))})"
    if "standin" in document and not isinstance(document["standin"], bool):
        return "standin: not true or false"
    return None


def _read_manifest(path: Path) -> Manifest:
    data = _read_regular(path, MANIFEST_MAX_BYTES)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadInput(f"{path}: not JSON ({err})", hint=REFETCH_HINT) from None
    problem = _manifest_problem(document)
    if problem:
        raise BadInput(f"{path}: {problem}", hint=REFETCH_HINT)
    return Manifest(document["version"], tuple(document["arches"]), dict(document["files"]))


def _bundle_version(bundle_dir: Path, manifest: Manifest | None) -> str:
    """The version, which the directory's name and bundle.json must agree on."""
    name = bundle_dir.name
    if manifest is None:
        if not VERSION_RE.fullmatch(name):
            raise BadInput(f"{bundle_dir}: cannot tell the k3s version (no {MANIFEST}, and the directory "
                           "is not named like v1.31.4+k3s1)", hint=REFETCH_HINT)
        return name
    if manifest.version != name:
        raise BadInput(f"{bundle_dir / MANIFEST}: says version {manifest.version}, but the bundle's directory "
                       f"is named {name} (fetch-k3s writes DIR/VERSION)", hint=REFETCH_HINT)
    return manifest.version


def verify(bundle_dir: Path, arches=ARCHES, pins: Path = k3s_pins.PINS) -> Bundle:
    """Check every file the image needs against the release's checksums, the
    checksum files against the pins, bundle.json against all of them, and the
    build host's binary's own version."""
    if not bundle_dir.is_dir():
        raise BadInput(f"{bundle_dir}: no such k3s bundle directory", hint=REFETCH_HINT)
    bundle_dir = bundle_dir.resolve()     # its name is the version, also when given through a link
    present = _only_regular_files(bundle_dir)
    manifest = _read_manifest(bundle_dir / MANIFEST) if MANIFEST in present else None
    version = _bundle_version(bundle_dir, manifest)
    files = {}
    for arch in arches:
        sums_path = bundle_dir / checksums_name(arch)
        if sums_path.name not in present:
            raise BadInput(f"{sums_path}: missing", hint=REFETCH_HINT)
        sums_bytes = _read_regular(sums_path, checksums.MAX_BYTES)
        k3s_pins.check_bundle(pins, version, sums_path.name, sums_bytes, sums_path)
        try:
            sums = checksums.parse(sums_bytes, str(sums_path))
        except checksums.ChecksumFileError as err:
            raise BadInput(str(err), hint=REFETCH_HINT) from None
        files[sums_path.name] = hashlib.sha256(sums_bytes).hexdigest()
        for name in (binary_name(arch), images_name(arch)):
            path = bundle_dir / name
            if name not in present:
                raise BadInput(f"{path}: missing", hint=REFETCH_HINT)
            if name not in sums:
                raise BadInput(f"{path}: not listed in {sums_path.name}", hint=REFETCH_HINT)
            got = _sha256(path)
            if got != sums[name]:
                raise BadInput(f"{path}: checksum mismatch (expected {sums[name]}, got {got})", hint=REFETCH_HINT)
            files[name] = got
    if manifest is not None:
        for name, listed in sorted(manifest.files.items()):
            if name not in present:
                raise BadInput(f"{bundle_dir / MANIFEST}: lists {name}, which is missing", hint=REFETCH_HINT)
            got = files.get(name) or _sha256(bundle_dir / name)
            if listed != got:
                raise BadInput(f"{bundle_dir / MANIFEST}: lists {name} with sha256 {listed}, but the file's is "
                               f"{got}", hint=REFETCH_HINT)
        files[MANIFEST] = _sha256(bundle_dir / MANIFEST)
    bundle = Bundle(version, bundle_dir, files)
    host_arch = k3s_version.host_arch()
    if host_arch in arches:
        _check_binary_version(bundle, host_arch)
    return bundle


def _check_binary_version(bundle: Bundle, arch: str) -> None:
    """The binary this machine can run must say it is the bundle's version."""
    binary = bundle.binary(arch)
    with tempfile.TemporaryDirectory(prefix="rackboot-k3s-version-") as work:
        os.chmod(work, 0o755)          # nobody runs it (image/k3s_version.py)
        copy = Path(work) / "k3s"
        copy_verified(binary, copy, bundle.files[binary.name], 0o755)
        said = k3s_version.version_of(copy, shown_as=binary)
    if said != bundle.version:
        raise BadInput(f"{binary}: says it is k3s {said} (k3s --version), but the bundle is {bundle.version} "
                       f"({bundle.path / MANIFEST if MANIFEST in bundle.files else 'its directory name'})",
                       hint=REFETCH_HINT)


# ------------------------------------------------------------------ copy


def copy_verified(source: Path, target: Path, expected: str, mode: int) -> None:
    """Copy source to target (new), checking as it copies that the bytes are
    the ones verified: a file changed or swapped for a link since is refused."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise RackbootError(f"{source}: cannot read it ({err.strerror}) after verifying it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RackbootError(f"{source}: no longer a regular file since it was verified")
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as data:
        with open(target, "xb") as out:
            for chunk in iter(lambda: data.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
    if digest.hexdigest() != expected:
        target.unlink()
        raise RackbootError(f"{source}: changed since it was verified (sha256 {digest.hexdigest()}, "
                            f"verified {expected})", hint="leave the bundle alone while an image builds")
    os.chmod(target, mode)


def install(bundle: Bundle, target: Path, arch: str | None = None) -> None:
    """The bundle's verified files (all, or those of arch) into target (new):
    nothing else of the bundle's directory."""
    target.mkdir(parents=True)
    for name in bundle.names(arch):
        binary = name in {binary_name(a) for a in ARCHES}
        copy_verified(bundle.path / name, target / name, bundle.files[name], 0o755 if binary else 0o644)


def pin(bundle_dir: Path, pins: Path = k3s_pins.PINS, arches=ARCHES) -> list[Path]:
    """Pin a fetched bundle's checksum files (fetch-k3s --pin); return the pins."""
    return [k3s_pins.write(pins, bundle_dir.name, checksums_name(arch), (bundle_dir / checksums_name(arch)).read_bytes())
            for arch in arches]
