"""Outputs appear whole or not at all: work happens in a staging directory
(or file) beside the destination, which then takes the destination's place.
The one way image/ stages: staged_directory; a single file goes through
firstboot/system.place (write_file)."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from firstboot import system
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


@contextlib.contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """A new, empty directory (mode 0700) beside destination to fill; when the
    block ends without an exception it replaces destination (replace_directory),
    otherwise it is removed and destination left as it was."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        replace_directory(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file(destination: Path, data: bytes, mode: int) -> None:
    """destination holds data with mode, or (on any failure) what it held
    before: the agent's stage-then-replace (firstboot/system.place), the one
    way rackboot writes a single file."""
    system.place(data, destination, mode)


def move_into(made: list[Path], output: Path) -> list[Path]:
    """Finished files (made in a work directory on output's filesystem) into
    output, each replacing its old copy; only once all of them are made, so
    that only a complete set lands. Returns where they are now."""
    for path in made:
        path.replace(output / path.name)
    return [output / path.name for path in made]
