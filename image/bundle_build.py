"""build.py bundle PROFILE -o DIR: one rack's bundle (firstboot/bundle.py says
what it holds), written whole into DIR/RACK/ or not at all. Its revision:
image/bundle_seal.py."""

import dataclasses
from pathlib import Path

from firstboot import bundle
from firstboot.layout import MACHINE
from firstboot.profile import RackProfile
from image import netboot, render
from image.atomic import staged_directory
from image.bundle_seal import copy_profiles, normalise_modes


def _every_boot_file() -> netboot.PiBootFiles:
    """The names of every shared boot file a Pi root may give (their files are
    the image's, linked to): a bundle is made without the Pis' root."""
    nowhere = Path("/nonexistent")
    return netboot.PiBootFiles(nowhere, nowhere, {name: nowhere for name in netboot.FIRMWARE},
                               {name: nowhere for name in netboot.DEVICE_TREES})


def _write_files(files: render.RenderedTree, destination: Path) -> None:
    for relative, content in sorted(files.items()):
        path = destination / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def write(profile: RackProfile, destination: Path, number: int, commit: str | None,
          rendered: render.RenderedTree | None = None) -> bundle.Bundle:
    """destination (replaced whole, or left as it was): profile's bundle."""
    rendered = rendered or render.render_rack(profile)
    with staged_directory(destination) as staging:
        _write_files(rendered, staging)
        copy_profiles(profile, staging)
        if profile.pis:
            netboot.write_tftp_tree(profile, rendered, _every_boot_file(), staging,
                                    shared_at=str(MACHINE.pi_boot))
        normalise_modes(staging)
        made = bundle.seal(staging, profile.rack, number, profile.k3s.version, commit)
    return dataclasses.replace(made, directory=destination)
