"""Pinned k3s checksum files: PINS/VERSION/sha256sum-ARCH.txt, committed to
this repository (image/k3s-pins/).

A release's checksum files come from the same place as the binaries they
vouch for, so a tampered mirror serves matching pairs. k3s-ansible and Talos
therefore keep the checksums of the k3s they install in their own
repositories; rackboot keeps the release's sha256sum-ARCH.txt files, byte
for byte. `fetch-k3s` compares what the mirror serves with them before it
downloads anything else, and `verify` compares a bundle's before it goes
into an image. A version with no directory here is not pinned; a version
with one must have a pin for every architecture fetched.

To pin a release: fetch it from a source you trust (GitHub's release page,
checked by hand or against a second mirror), with `--pin`, and commit what
it wrote:

    ./build.py fetch-k3s v1.31.4+k3s1 -o k3s --pin
    git add image/k3s-pins/v1.31.4+k3s1
"""

from pathlib import Path

from firstboot.errors import BadInput, RackbootError
from image import atomic

PINS = Path(__file__).resolve().parent / "k3s-pins"
MAX_BYTES = 1 << 20


def pinned(pins: Path, version: str, name: str) -> bytes | None:
    """The pinned checksum file name of version, or None if version is not pinned."""
    directory = pins / version
    if not directory.is_dir():
        return None
    pin = directory / name
    if pin.is_symlink() or not pin.is_file():
        raise RackbootError(f"{pin}: missing; {directory} pins {version} but not this file",
                            hint=f"pin it (./build.py fetch-k3s {version} -o DIR --pin from a trusted "
                                 "mirror), or remove the directory to unpin the version")
    data = pin.read_bytes()
    if len(data) > MAX_BYTES:
        raise RackbootError(f"{pin}: larger than {MAX_BYTES} bytes; not a checksum file")
    return data


def check_download(pins: Path, version: str, name: str, served: bytes, url: str) -> None:
    """A checksum file a mirror served must be the pinned one."""
    pin = pinned(pins, version, name)
    if pin is not None and served != pin:
        raise RackbootError(
            f"{url}: differs from the pinned {pins / version / name}; the mirror serves other checksums "
            f"for k3s {version} than this repository pins",
            hint="the mirror may be tampered with, or serve a re-tagged release: fetch from another "
                 "mirror, and change the pin only after checking the release upstream")


def check_bundle(pins: Path, version: str, name: str, held: bytes, path: Path) -> None:
    """A bundle's checksum file must be the pinned one."""
    pin = pinned(pins, version, name)
    if pin is not None and held != pin:
        raise BadInput(f"{path}: differs from the pinned {pins / version / name}; this bundle's checksums "
                       f"are not those of k3s {version}",
                       hint=f"fetch the release again: ./build.py fetch-k3s {version} -o DIR")


def write(pins: Path, version: str, name: str, data: bytes) -> Path:
    """Pin data as version's name; return the pin."""
    directory = pins / version
    directory.mkdir(parents=True, exist_ok=True)
    pin = directory / name
    if pin.is_file() and not pin.is_symlink() and pin.read_bytes() == data:
        return pin
    atomic.write_file(pin, data, 0o644)
    return pin
