"""Stands in for a k3s air-gap bundle (./build.py fetch-k3s) by carrying tests/doubles/k3s_standin.py as its `k3s` binaries; to run the tests against real k3s, set RACKBOOT_K3S_BUNDLE=DIR to a bundle fetched with ./build.py fetch-k3s (untested here: no real bundle on this machine).

The layout and checksum files are a real bundle's, so the image build
(image.k3s_bundle.verify) and the agent's k3s step take it as one.
"""

import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

from image import k3s_bundle
from tests.doubles.k8s_api import schema

STANDIN = Path(__file__).resolve().parent / "k3s_standin.py"
API_PACKAGE = STANDIN.parent / "k8s_api"
REAL_BUNDLE_ENV = "RACKBOOT_K3S_BUNDLE"


def real_bundle() -> Path | None:
    value = os.environ.get(REAL_BUNDLE_ENV)
    return Path(value) if value else None


def next_minor(version: str) -> str:
    """The first release of the minor after version's (v1.35.5+k3s1 -> v1.36.0+k3s1): an upgrade to it is one step."""
    from firstboot import k3s_versions
    major, minor = k3s_versions.minor(version)
    return f"v{major}.{minor + 1}.0+k3s1"


def standin_binary(version: str) -> bytes:
    """The stand-in as a `k3s` binary that says it is version (k3s --version): a
    zip application (#! line, then a zip) holding the stand-in as __main__.py,
    its Kubernetes API package and that version's schemas, so that one
    executable file is all, as with real k3s. Same bytes for the same version."""
    source = STANDIN.read_text()
    marker = 'VERSION = "v1.31.4+k3s1"'
    assert marker in source, "the stand-in's VERSION line moved; update k3s_standin_bundle"
    files = {"__main__.py": source.replace(marker, f'VERSION = "{version}"', 1).encode()}
    for module in sorted(API_PACKAGE.glob("*.py")):
        files[f"k8s_api/{module.name}"] = module.read_bytes()
    files[f"k8s_api/{schema.DATA}"] = schema.packed(version)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in files.items():
            out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return b"#!/usr/bin/env python3\n" + archive.getvalue()


def make(destination: Path, version: str = "v1.31.4+k3s1", binary_version: str | None = None) -> Path:
    """Write a stand-in bundle for version into destination/version; return it.
    binary_version: what its binaries say they are, if not version (a bundle
    that lies about its version, for tests)."""
    bundle = destination / version
    bundle.mkdir(parents=True)
    binary = standin_binary(binary_version or version)
    # The images tarball: a real zstd-compressed tar (with nothing k3s would import).
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        note = f"k3s {version} air-gap images stand-in: no images\n".encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(note)
        archive.addfile(info, io.BytesIO(note))
    images = subprocess.run(["zstd", "-q", "-c"], input=tar.getvalue(), capture_output=True, check=True).stdout
    files = {}
    for arch in k3s_bundle.ARCHES:
        assets = {k3s_bundle.binary_name(arch): binary, k3s_bundle.images_name(arch): images}
        lines = []
        for name, data in assets.items():
            (bundle / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
            lines.append(f"{files[name]}  {name}")
        (bundle / k3s_bundle.binary_name(arch)).chmod(0o755)
        sums = ("\n".join(lines) + "\n").encode()
        (bundle / k3s_bundle.checksums_name(arch)).write_bytes(sums)
        files[k3s_bundle.checksums_name(arch)] = hashlib.sha256(sums).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps({"version": version, "arches": list(k3s_bundle.ARCHES),
                                                    "files": files, "standin": True}, indent=2) + "\n")
    return bundle
