"""Problems found in rack profiles, as data: where (the file, and the keys to
the value in it) and what. Each is shown to the user as `FILE: PATH: MESSAGE`."""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

Keys = tuple[str | int, ...]   # ("pis", 3, "mac") is pis[3].mac


def shown(path: Path | str) -> str:
    """A path as it may appear in a message: control characters escaped."""
    text = str(path)
    return text if text.isprintable() else repr(text)[1:-1]


def format_path(path: Iterable) -> str:
    """Keys as the user writes them: `pis[3].mac`; `(top level)` for none."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{shown(part)}" if text else shown(part))
    return text or "(top level)"


_KINDS = ((type(None), "nothing"), (bool, "true or false"), (dict, "a mapping"), (list, "a list"),
          (str, "a string"), (int, "an integer"), (float, "a number"))


def kind(value) -> str:
    """What a YAML value is, in the words of the messages ("a mapping")."""
    for python, words in _KINDS:
        if isinstance(value, python):
            return words
    return type(value).__name__


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a profile.

    path: the keys to the offending value; () for the document as a whole;
    None for the file itself (unreadable, badly named, not YAML).
    file: the file the value came from. Checks of a merged document do not
    know it: the loader sets it (the profile, or its defaults.yaml).
    position: (line, column) of a YAML syntax error."""

    path: Keys | None
    message: str
    file: Path | None = None
    position: tuple[int, int] | None = None

    def located(self, file: Path) -> "Problem":
        return replace(self, file=file)

    def __str__(self) -> str:
        where = shown(self.file)
        if self.position is not None:
            where += f":{self.position[0]}:{self.position[1]}"
        if self.path is not None:
            where += f": {format_path(self.path)}"
        return f"{where}: {self.message}"


class Unreadable(Exception):
    """A file that cannot be read as a profile: nothing more is checked in it."""

    def __init__(self, *problems: Problem):
        super().__init__("\n".join(map(str, problems)))
        self.problems = list(problems)
