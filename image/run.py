"""Every external command goes through run(): argv as a list (never a shell
string), stdin from /dev/null, `+ argv` logged at debug, and a CommandFailed
that carries the command, its exit status and the end of its output."""

import collections
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from firstboot.errors import RackbootError

log = logging.getLogger("rackboot")


class CommandFailed(RackbootError):
    def __init__(self, argv: Sequence[str], status: int, output: str, hint: str | None = None):
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"command failed (exit status {status}): {shlex.join(argv)}"
                         + (f"\n{tail}" if tail else ""), hint)
        self.argv, self.status, self.output = list(argv), status, output


def run(argv: Sequence[str | Path], *, capture: bool = False, stream: bool = False,
        env: dict | None = None, cwd: Path | None = None, redact: Sequence[str] = (),
        check: bool = True, hint: str | None = None) -> subprocess.CompletedProcess:
    """Run argv.

    capture: return stdout (and stderr) instead of showing them.
    stream: show the command's output live on stderr (long steps); otherwise
    it is shown only with -v, and its tail in the error if the command fails.
    redact: strings replaced by *** wherever argv or output is logged or reported.
    """
    argv = [str(a) for a in argv]
    shown = [_redact(a, redact) for a in argv]
    log.debug("+ %s", shlex.join(shown))
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    if capture:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, text=True, cwd=cwd, env=full_env,
                                capture_output=True)
        output = result.stderr
    else:
        # stdout and stderr merged, line by line: shown live or kept for the error.
        tail: collections.deque[str] = collections.deque(maxlen=200)
        show = stream or log.isEnabledFor(logging.DEBUG)
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              cwd=cwd, env=full_env) as proc:
            for line in proc.stdout:
                line = _redact(line, redact)
                tail.append(line)
                if show:
                    sys.stderr.write("    " + line)
        result = subprocess.CompletedProcess(argv, proc.returncode, None, "".join(tail))
        output = result.stderr
    if check and result.returncode != 0:
        raise CommandFailed(shown, result.returncode, _redact(output or "", redact), hint)
    return result


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
