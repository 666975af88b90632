"""The k3s air-gap bundle: what an image carries so that k3s installs with no
network at first boot (a rack's jumphost may have none to the internet).

    DIR/VERSION/k3s, k3s-arm64                     the binaries
    DIR/VERSION/k3s-airgap-images-ARCH.tar.zst     the images k3s deploys itself
    DIR/VERSION/sha256sum-ARCH.txt                 k3s's own checksum files
    DIR/VERSION/bundle.json                        what was fetched, written last

image/k3s_fetch.py downloads one (fetch-k3s); `verify` checks a bundle again
before it goes into an image, each file as firstboot/k3s_bundle_files.py
checks it (the machines check the image's copy the same way);
`copy_verified` copies one of its files into an image, checking the bytes it
copies. Either fails naming the file, and leaves nothing half-written.

A bundle is refused, not followed, when it holds anything but regular files
(a symbolic link could pull any file of the build host into the image), and
when its bundle.json is malformed or lies about the version: it must name
the directory's version and the files' checksums, and the binary for the
build host's architecture must say the same version (image/k3s_version.py).
"""

import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firstboot import checksums
from firstboot.errors import BadInput, RackbootError
from firstboot.k3s_bundle_files import (ARCHES, CHUNK, VERSION_RE, BundleFileError, arch_files, binary_name,
                                        check_file, checksums_name, images_name, parse_checksums, read_regular,
                                        sha256_file)
from image import k3s_pins, k3s_version

MANIFEST = "bundle.json"
MANIFEST_MAX_BYTES = 1 << 16
REFETCH_HINT = "fetch it again: ./build.py fetch-k3s VERSION -o DIR"


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

    def names(self, arch: str | None = None) -> list[str]:
        """The files an image gets: all, or those of one architecture."""
        return sorted(self.files) if arch is None else list(arch_files(arch))


# ------------------------------------------------------------------ verify


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at path (not through a link), at most limit."""
    try:
        return read_regular(path, limit)
    except BundleFileError as err:
        raise BadInput(str(err), hint=REFETCH_HINT) from None


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


def _verify_arch(bundle_dir: Path, arch: str, version: str, pins: Path) -> dict[str, str]:
    """arch's checksum file (against the pins), binary and images; name -> sha256."""
    sums_path = bundle_dir / checksums_name(arch)
    try:
        data = read_regular(sums_path, checksums.MAX_BYTES)
        k3s_pins.check_bundle(pins, version, sums_path.name, data, sums_path)
        listed = parse_checksums(sums_path, data)
        files = {sums_path.name: hashlib.sha256(data).hexdigest()}
        for name in (binary_name(arch), images_name(arch)):
            files[name] = check_file(bundle_dir / name, listed)
    except BundleFileError as err:
        raise BadInput(str(err), hint=REFETCH_HINT) from None
    return files


def _check_manifest_files(bundle_dir: Path, manifest: Manifest, present: list[str], files: dict) -> None:
    """bundle.json's checksums must be the files' own."""
    for name, listed in sorted(manifest.files.items()):
        if name not in present:
            raise BadInput(f"{bundle_dir / MANIFEST}: lists {name}, which is missing", hint=REFETCH_HINT)
        got = files.get(name) or sha256_file(bundle_dir / name)
        if listed != got:
            raise BadInput(f"{bundle_dir / MANIFEST}: lists {name} with sha256 {listed}, but the file's is "
                           f"{got}", hint=REFETCH_HINT)


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
        files.update(_verify_arch(bundle_dir, arch, version, pins))
    if manifest is not None:
        _check_manifest_files(bundle_dir, manifest, present, files)
        files[MANIFEST] = sha256_file(bundle_dir / MANIFEST)
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
