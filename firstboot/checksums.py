"""sha256sum files (k3s publishes sha256sum-ARCH.txt with each release), read
one way on the build host (image/k3s_bundle.py) and on the machines
(firstboot/k3s.py), so that a line one of them takes the other takes too.

The format is sha256sum's own, strictly: each line is 64 lower-case hex
digits, a space, a space or '*' (text or binary mode), and the file name.
Anything else is an error naming the file and line, not a line to skip: a
skipped line could hide a second, different checksum for the same file.
Refused: upper-case hex, sha256sum's escaped form (a leading backslash,
for names with a newline or backslash), BSD-style `SHA256 (name) = ...`
lines, blank lines, CR line ends, names with control characters or with
white space at either end, a name listed twice, and an empty file.
"""

import re
import unicodedata
from pathlib import Path

from firstboot import files

MAX_BYTES = 1 << 20      # k3s's lists are a few hundred bytes
LINE = re.compile(r"(?P<digest>[0-9a-f]{64}) (?P<mode>[ *])(?P<name>.+)", re.DOTALL)


class ChecksumFileError(ValueError):
    """A checksum file that is not strictly in sha256sum's format; the message
    starts with SOURCE:LINE."""


def _name_problem(name: str) -> str | None:
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "the file name holds a control character"
    if name != name.strip():
        return "the file name starts or ends with white space"
    return None


def parse(data: bytes, source: str) -> dict[str, str]:
    """File name -> sha256 (lower-case hex) of every line of data."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ChecksumFileError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":          # the usual final newline ends the last line
        lines.pop()
    if not lines:
        raise ChecksumFileError(f"{source}: empty: no checksum lines")
    sums: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{source}:{number}"
        match = LINE.fullmatch(line)
        if not match:
            raise ChecksumFileError(f"{where}: not a sha256sum line (64 lower-case hex digits, two spaces "
                                    "or a space and '*', a file name)")
        name = match["name"]
        problem = _name_problem(name)
        if problem:
            raise ChecksumFileError(f"{where}: {problem}")
        if name in sums:
            raise ChecksumFileError(f"{where}: {name} is listed twice")
        sums[name] = match["digest"]
    return sums


def read(path: Path) -> dict[str, str]:
    """parse() of the regular file at path (not a link to one); OSError if it
    cannot be opened (missing, unreadable)."""
    try:
        data = files.read_regular(path, MAX_BYTES, follow_symlinks=False)
    except files.NotRegularFile as err:
        raise ChecksumFileError(f"{path}: {err.kind}, not a regular file") from None
    except files.TooLarge:
        raise ChecksumFileError(f"{path}: larger than {MAX_BYTES} bytes; not a checksum file") from None
    return parse(data, str(path))
