"""Outputs appear whole or not at all: work happens in a staging directory
beside the destination, which then takes the destination's place."""

import shutil
from pathlib import Path

from firstboot.errors import RackbootError


def replace_directory(staging: Path, destination: Path) -> None:
    """Put staging where destination is. Both must be on one filesystem (make
    staging beside destination). An old destination is moved aside first and
    removed only once the new one is in place. Only a directory is replaced:
    a link or a file in its place is left alone (image/output.py refuses
    those before any work; this is the last guard)."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise RackbootError(f"{destination}: not a directory; rackboot replaces only directories it wrote",
                            hint=f"move {destination} out of the way")
    if not destination.exists():
        staging.rename(destination)
        return
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    destination.rename(old)
    staging.rename(destination)
    shutil.rmtree(old)
