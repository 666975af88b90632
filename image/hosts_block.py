"""rackboot's block in a hosts file: the lines between

    # BEGIN rackboot rack RACK
    # END rackboot rack RACK

are rackboot's (templates/router/hosts.j2 renders them); every other line
belongs to someone else and is kept byte for byte, line endings and a
missing final newline included. A file without the block gets it at its end.

The router's file is not rackboot's input, so it is read strictly: a marker
that is damaged (edited, doubled, an END without its BEGIN, a BEGIN without
its END) stops the change, as does one of the block's names mapped by another
line of the file. dnsmasq answers a name with every address the hosts files
give it, so `metadata` on the legacy line and in the block would send half
of the rack's requests to the wrong jumphost.
"""

import difflib
import re
from dataclasses import dataclass

from firstboot.errors import RackbootError

MARKER = "rackboot rack {rack}"
NOTICE = "# written by build.py router: change the rack's profile, not these lines"


@dataclass(frozen=True)
class Block:
    """Where rackboot's block is in a file's lines: [begin, end] inclusive, or absent."""
    begin: int | None
    end: int | None


class DamagedHostsFile(RackbootError):
    pass


def markers(rack: str) -> tuple[str, str]:
    return f"# BEGIN {MARKER.format(rack=rack)}", f"# END {MARKER.format(rack=rack)}"


def _content(line: str) -> str:
    return line.rstrip("\r\n")


def find_block(lines: list[str], rack: str, where: str) -> Block:
    """The block's place in lines (each with its line ending); DamagedHostsFile
    naming where:LINE if the markers are not exactly one BEGIN, then one END."""
    begin_marker, end_marker = markers(rack)
    mention = re.compile(rf"rackboot\s+rack\s+{re.escape(rack)}(\s|$)", re.I)
    begins, ends = [], []
    for number, line in enumerate(lines):
        text = _content(line)
        if text == begin_marker:
            begins.append(number)
        elif text == end_marker:
            ends.append(number)
        elif mention.search(text) and text.lstrip().startswith("#"):
            raise DamagedHostsFile(f"{where}:{number + 1}: a damaged marker of rackboot's block: {text!r} "
                                   f"(the markers are exactly {begin_marker!r} and {end_marker!r})",
                                   hint=_REPAIR.format(where=where))
    if not begins and not ends:
        return Block(None, None)
    problem = None
    if len(begins) > 1 or len(ends) > 1:
        problem = f"{where}:{(begins + ends)[1] + 1}: rackboot's block for rack {rack} is marked more than once"
    elif not ends:
        problem = f"{where}:{begins[0] + 1}: rackboot's block for rack {rack} begins here but never ends " \
                  f"(no {end_marker!r} line)"
    elif not begins or ends[0] < begins[0]:
        problem = f"{where}:{ends[0] + 1}: rackboot's block for rack {rack} ends here but does not begin " \
                  f"before it (no {begin_marker!r} line)"
    if problem:
        raise DamagedHostsFile(problem, hint=_REPAIR.format(where=where))
    return Block(begins[0], ends[0])


_REPAIR = ("rackboot changes nothing in a file whose block it cannot find exactly: on the router, remove "
           "the damaged block's lines from {where} (or repair its markers), then run again")


def _names(line: str) -> tuple[str, list[str]]:
    """(address, names) of one hosts line, as a resolver reads it: '#' to
    the end of the line is a comment, words are separated by blanks."""
    words = _content(line).split("#", 1)[0].split()
    return (words[0], words[1:]) if words else ("", [])


def check_conflicts(lines: list[str], block: Block, owned: list[str], where: str) -> None:
    """DamagedHostsFile if a line outside the block maps a name the block maps."""
    owned_names = {name.lower(): name for name in owned}      # resolvers compare names case-insensitively
    for number, line in enumerate(lines):
        if block.begin is not None and block.begin <= number <= block.end:
            continue
        address, names = _names(line)
        taken = [name for name in names if name.lower() in owned_names]
        if taken:
            raise DamagedHostsFile(
                f"{where}:{number + 1}: {', '.join(map(repr, taken))} {'is' if len(taken) == 1 else 'are'} also "
                f"mapped here, outside rackboot's "
                f"block ({_content(line).strip()!r}): dnsmasq would answer with both {address} and the block's "
                "address", hint=f"on the router, remove {', '.join(taken)} from that line of {where} (rackboot "
                                "edits only its own block; the block then answers the name alone)")


def replaced(text: str, rack: str, block_lines: list[str], where: str) -> str:
    """text with rackboot's block for rack replaced by block_lines (or added at
    the end), every other line kept as it was."""
    lines = text.splitlines(keepends=True)
    block = find_block(lines, rack, where)
    owned = [name for line in block_lines for name in _names(line)[1]]
    check_conflicts(lines, block, owned, where)
    begin_marker, end_marker = markers(rack)
    new_block = [begin_marker + "\n", NOTICE + "\n", *(line + "\n" for line in block_lines), end_marker + "\n"]
    if block.begin is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"       # the old last line gets the newline it needs before the block
        return "".join(lines + new_block)
    return "".join(lines[:block.begin] + new_block + lines[block.end + 1:])


def diff(old: str, new: str, where: str) -> str:
    """A unified diff of the change, as `diff -u` shows it."""
    def lines(text: str) -> list[str]:      # a last line without its newline is shown as one with it
        return [line if line.endswith("\n") else line + "\n" for line in text.splitlines(keepends=True)]
    return "".join(difflib.unified_diff(lines(old), lines(new), fromfile=f"{where} (now)",
                                        tofile=f"{where} (after)"))
