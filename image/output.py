"""Output directories (-o DIR): rackboot writes only into a directory that is
new, empty, or one it made, and replaces there only what it writes.

A directory rackboot makes (or takes while empty) gets a marker file,
.rackboot-output; rack names are DNS labels, so no rack's output is called
that. Anything else is refused before any work starts: `/`, a file, and a
directory with something in it and no marker, since re-rendering replaces
DIR/RACK whole and a rack may be called `etc`. Inside a marked directory,
what a verb replaces must be of the kind it writes (a rack's directory, an
image file), never a link: a link would have the replacement land elsewhere.

`check` only looks; `claim` (after every other input was checked, so that
bad input writes nothing) makes the directory and its marker.
"""

import enum
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from firstboot.errors import BadInput, RackbootError

MARKER = ".rackboot-output"
MARKER_TEXT = """\
rackboot (build.py) made this directory for its outputs and replaces what it
writes here (DIR/RACK/, images, seeds, k3s bundles) on the next run.
Remove this file to stop rackboot from writing here.
"""


class Kind(enum.StrEnum):
    DIRECTORY = "directory"
    FILE = "file"


@dataclass(frozen=True)
class Output:
    path: Path
    replaces: dict = field(default_factory=dict)     # name -> Kind, what the verb writes into path

    def claim(self) -> Path:
        """Make the directory and its marker; return the directory."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            marker = self.path / MARKER
            if not marker.exists():
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                with os.fdopen(fd, "w") as out:
                    out.write(MARKER_TEXT)
        except OSError as err:
            raise RackbootError(f"{self.path}: cannot make the output directory ({err.strerror})") from None
        return self.path


def _refuse(path: Path, message: str, hint: str | None = None) -> BadInput:
    return BadInput(f"{path}: {message}", hint=hint or "give -o a new or empty directory")


def _is_marked(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path / MARKER).st_mode)
    except OSError:
        return False


def _check_missing(path: Path) -> None:
    """A directory to be made: its nearest existing ancestor must be a directory."""
    for ancestor in path.absolute().parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise _refuse(path, f"cannot make it: {ancestor} is not a directory")
            return


def _check_replaced(path: Path, replaces: dict) -> None:
    for name, kind in sorted(replaces.items()):
        entry = path / name
        try:
            mode = os.lstat(entry).st_mode
        except FileNotFoundError:
            continue
        except OSError as err:
            raise _refuse(entry, f"cannot look at it ({err.strerror})") from None
        wanted = stat.S_ISDIR if kind is Kind.DIRECTORY else stat.S_ISREG
        if not wanted(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a " + kind.value
            raise _refuse(entry, f"{what}; rackboot writes a {kind.value} here and replaces only "
                                 f"{kind.value}s it wrote", hint=f"move {entry} out of the way")


def check(path: Path, replaces: dict | None = None) -> Output:
    """Refuse an output directory rackboot must not write into (exit 2)."""
    replaces = dict(replaces or {})
    if path.resolve() == Path("/"):
        raise _refuse(path, "is the root directory; rackboot writes only into a directory of its own")
    if not os.path.lexists(path):
        _check_missing(path)
        return Output(path, replaces)
    if not path.exists():
        raise _refuse(path, "a symbolic link to nothing")
    if not path.is_dir():
        raise _refuse(path, "not a directory" + (" but a file" if path.is_file() else ""))
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except OSError as err:
        raise _refuse(path, f"cannot list it ({err.strerror})") from None
    if not empty and not _is_marked(path):
        raise _refuse(path, f"a directory rackboot did not make (it is not empty and has no {MARKER}); "
                            "rackboot replaces what it writes into its output directory, so it writes only "
                            "into a new or empty one, or one it made",
                      hint=f"give -o a new or empty directory; if an earlier rackboot made {path}, "
                           f"create {path / MARKER} to let it write there again")
    _check_replaced(path, replaces)
    return Output(path, replaces)
