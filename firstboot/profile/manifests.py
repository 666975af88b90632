"""The Kubernetes YAML files a profile's `manifests` entries name.

An entry is a path inside the profile's directory: no '..', and no symbolic
link anywhere below that directory, so what `check` saw is what goes into
the image. Files are regular files; a directory contributes its *.yaml and
*.yml files, sorted (not its subdirectories)."""

import re
import stat
from pathlib import Path

from firstboot.profile.problems import Problem, shown

# The *.yaml files found in manifest directories: names any tool downstream
# (the image's file list, kubectl, logs) takes as they are. The entries
# themselves the schema's manifests pattern keeps as plain.
MANIFEST_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SUFFIXES = (".yaml", ".yml")


def _walk(root: Path, parts: list[str]) -> tuple[Path, int | None]:
    """The path and its lstat mode (None: it does not exist), stopping at the
    first symbolic link on the way."""
    path, mode = root, None
    for part in parts:
        path = path / part
        try:
            mode = path.lstat().st_mode
        except OSError:
            return path, None
        if stat.S_ISLNK(mode):
            break
    return path, mode


def _directory(entry: str, path: Path) -> tuple[list[Path], list[str]]:
    """A directory entry's manifest files, and what is refused in it."""
    try:
        children = sorted(path.iterdir())
    except OSError as err:
        return [], [f"{entry!r}: cannot list {shown(path)}: {err.strerror}"]
    found, refusals = [], []
    for child in (c for c in children if c.suffix in _SUFFIXES):
        child_mode = child.lstat().st_mode
        if stat.S_ISLNK(child_mode):
            refusals.append(f"{child.name!r} in {entry!r} is a symbolic link (manifests must be regular files)")
        elif not stat.S_ISREG(child_mode):
            refusals.append(f"{child.name!r} in {entry!r} is not a regular file")
        elif not MANIFEST_NAME.fullmatch(child.name):
            refusals.append(f"{child.name!r} in {entry!r} is not a manifest file name "
                            "(letters, digits, '.', '_' and '-')")
        else:
            found.append(child)
    if not any(c.suffix in _SUFFIXES for c in children):
        refusals.append(f"directory {entry!r} holds no *.yaml files")
    return found, refusals


def _entry(entry: str, root: Path) -> tuple[list[Path], list[str]]:
    """One entry's files, and what is refused in it."""
    parts = [part for part in entry.split("/") if part not in ("", ".")]
    if entry.startswith("/") or ".." in parts:
        return [], [f"{entry!r} is outside the profile's directory (manifests are paths inside it, without '..')"]
    if not parts:
        return [], [f"{entry!r} is the profile's directory itself (name a directory of manifests in it)"]
    path, mode = _walk(root, parts)
    if mode is None:
        return [], [f"{entry!r} does not exist (looked for {shown(path)})"]
    if stat.S_ISLNK(mode):
        return [], [f"{entry!r}: {shown(path)} is a symbolic link (manifests must be regular files "
                    "inside the profile's directory)"]
    if stat.S_ISDIR(mode):
        return _directory(entry, path)
    if stat.S_ISREG(mode):
        return [path], []
    return [], [f"{entry!r} is not a regular file or a directory"]


def resolve_manifests(entries: list[str], base: Path) -> tuple[tuple[Path, ...], list[Problem]]:
    """The files named by entries (paths relative to base), in order, and
    a problem for each entry, or file in an entry's directory, refused."""
    files: list[Path] = []
    problems: list[Problem] = []
    root = base.resolve()
    for index, entry in enumerate(entries):
        found, refusals = _entry(entry, root)
        files += found
        problems += [Problem(("manifests", index), message) for message in refusals]
    return tuple(files), problems
