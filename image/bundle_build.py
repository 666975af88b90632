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


def write_tftp(profile: RackProfile, rendered: render.RenderedTree, tftp: Path) -> None:
    """The bundle's TFTP tree: the rendered config.txt and cmdline.txt, links
    to every shared boot file of the image (one a Debian kernel lacks, such as
    the Pi 5's device tree, is a link to nothing: not found, as if absent),
    and each Pi's directory as a link to the tree itself (`SERIAL -> .`): one
    entry per Pi, where the image's tree has a directory of links (a 300-Pi
    bundle is then 300 links, not 5,000: on a slow disk that is most of its
    build time). dnsmasq follows it like any link in its TFTP root."""
    tftp.mkdir()
    for name in netboot.shared_boot_files(_every_boot_file()):
        (tftp / name).symlink_to(f"{MACHINE.pi_boot}/{name}")
    for name in ("config.txt", "cmdline.txt"):
        netboot.write_rendered(rendered, f"pi/tftp/{name}", tftp / name)
    for pi in profile.pis:
        directory = netboot.pi_directory(pi, profile.netboot.boot_dir_by)
        if directory is not None:     # without one it boots from the TFTP root (netboot.write_tftp_tree says so)
            (tftp / directory).symlink_to(".")


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
            write_tftp(profile, rendered, staging / "tftp")
        normalise_modes(staging)
        made = bundle.seal(staging, profile.rack, number, profile.k3s.version, commit)
    return dataclasses.replace(made, directory=destination)
