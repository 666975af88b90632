"""The agent's environment file (/etc/rackboot/agent.env, from a seed's
--agent-env and --credentials), which its unit reads with EnvironmentFile=.

systemd reads such a file with its own rules (systemd.exec(5),
EnvironmentFile=): an unquoted value loses leading and trailing white space
and its backslashes, a line ending in a backslash continues on the next, and
'#' or ';' starts a comment line. So a value with anything but letters,
digits and _./:@%+,=- is written double-quoted, with the four characters
special there (" \\ ` $) escaped by a backslash; systemd then reads exactly
the value given (so would a POSIX shell). Names are shell identifiers.

Refused rather than quoted: control characters (newline, tab, CR, ...: no
endpoint or setting holds one, and systemd's line-based reader and the
journal would each take them their own way), the characters systemd refuses
in environment files (U+FEFF, Unicode noncharacters), and text that is not
Unicode (a command-line argument that was not UTF-8). Errors name the
setting, never its value: it may be a secret.
"""

import re
import unicodedata

from firstboot.errors import BadInput

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]+")       # nothing systemd's reader treats specially
ESCAPED = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}


def _value_problem(value: str) -> str | None:
    for position, char in enumerate(value, start=1):
        code = ord(char)
        category = unicodedata.category(char)
        if category == "Cc":
            return f"a control character (U+{code:04X}) at character {position}"
        if category == "Cs":
            return f"bytes that are not UTF-8 at character {position}"
        if code == 0xFEFF or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return f"U+{code:04X}, which systemd refuses in environment files, at character {position}"
    return None


def check(name: str, value: str) -> None:
    if not NAME.fullmatch(name):
        raise BadInput(f"--agent-env {name!r}: not an environment variable name "
                       "(a letter or '_', then letters, digits or '_')")
    problem = _value_problem(value)
    if problem:
        raise BadInput(f"--agent-env {name}: its value holds {problem}; agent.env cannot carry it")


def parse(settings: list[str]) -> dict[str, str]:
    """--agent-env NAME=VALUE settings, each checked; a name given twice is refused."""
    env: dict[str, str] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep:
            if NAME.fullmatch(setting):
                raise BadInput(f"--agent-env {setting!r}: expected NAME=VALUE")
            raise BadInput("--agent-env: a setting without '=' (not shown: it may be a secret); "
                           "expected NAME=VALUE")
        check(name, value)
        if name in env:
            raise BadInput(f"--agent-env {name}: given twice")
        env[name] = value
    return env


def quote(value: str) -> str:
    """value as systemd reads it back: bare when nothing in it is special
    (the usual host:port or URL stays readable), else double-quoted."""
    if BARE.fullmatch(value):
        return value
    return '"' + "".join(ESCAPED.get(c, c) for c in value) + '"'


def render(env: dict[str, str]) -> str:
    """The file's text: NAME="VALUE" lines, sorted by name."""
    for name, value in env.items():
        check(name, value)
    return "".join(f"{name}={quote(value)}\n" for name, value in sorted(env.items()))
