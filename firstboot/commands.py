"""Every external command, the builder's and the agent's, goes through run().

- argv is a list, never shell text: nothing a profile or the rack network
  supplies can become a shell word.
- stdin is /dev/null: a command that would prompt fails instead of hanging a
  boot or a build.
- The environment is built from a whitelist, not inherited: a builder's
  shell variables (or a test's) must not change what mmdebstrap, apt or
  systemctl do, and nothing secret that happens to be in the caller's
  environment reaches a child.
- `+ argv` is logged at debug, so `-v` (builder) or the journal (agent) shows
  exactly what ran.
- A failure is a CommandFailed carrying the command, its exit status, the
  tail of its output and the caller's hint (what to look at next), so every
  caller reports failures the same way.
"""

import collections
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from firstboot.errors import RackbootError

log = logging.getLogger("rackboot")

# Passed on from the caller's environment when set. PATH finds the tools;
# the proxy variables are how apt and mmdebstrap reach a mirror behind a
# proxy, the SSL_CERT_* ones how they trust it; SOURCE_DATE_EPOCH makes
# builds reproducible; SYSTEMD_* configures systemctl (SYSTEMD_LOG_LEVEL,
# SYSTEMD_PAGER, ...) and PIP_* the pip that vendors the agent's libraries
# (a local index or wheel directory).
PASSED_VARIABLES = ("PATH", "HOME", "TMPDIR", "TERM", "SOURCE_DATE_EPOCH", "SSL_CERT_FILE", "SSL_CERT_DIR",
                    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
PASSED_PREFIXES = ("SYSTEMD_", "PIP_")
FIXED = {"LC_ALL": "C.UTF-8"}   # output parsed by rackboot is never translated
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 15


class CommandFailed(RackbootError):
    def __init__(self, argv: Sequence[str], status: int | None, output: str, hint: str | None = None):
        tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
        how = "timed out" if status is None else f"exit status {status}"
        super().__init__(f"{shlex.join(argv)} failed ({how})" + (f":\n{tail}" if tail else ""), hint)
        self.argv, self.status, self.output = list(argv), status, output


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whitelisted environment a command runs with, plus `extra`."""
    env = {name: value for name, value in os.environ.items()
           if name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES)}
    env.setdefault("PATH", DEFAULT_PATH)
    return {**env, **FIXED, **(extra or {})}


def run(argv: Sequence[str | Path], *, capture: bool = False, stream: bool = False,
        env: Mapping[str, str] | None = None, cwd: Path | None = None, check: bool = True,
        timeout: float | None = None, hint: str | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv.

    capture: return stdout (stderr kept apart) instead of showing it.
    stream: show the command's output live on stderr (long build steps);
    otherwise it is shown only at debug, and its tail in the error.
    env: variables added to the whitelisted environment.
    check: raise CommandFailed on a non-zero exit status (else return it).
    timeout: seconds (with capture); a command still running then is killed
    and fails.
    input: text for the command's stdin (with capture), e.g. a file's new
    content for ssh ... tee; otherwise stdin is /dev/null.
    """
    if (timeout is not None or input is not None) and not capture:
        raise ValueError("run(): timeout and input need capture=True")
    argv = [str(a) for a in argv]
    log.debug("+ %s", shlex.join(argv))
    full_env = environment(env)
    try:
        if capture:
            stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
            result = subprocess.run(argv, **stdin, text=True, errors="replace", cwd=cwd,
                                    env=full_env, capture_output=True, timeout=timeout)
            output = result.stderr or result.stdout
        else:
            result = _run_merged(argv, stream, full_env, cwd)
            output = result.stderr
    except subprocess.TimeoutExpired as err:
        partial = err.stderr or err.output or ""
        raise CommandFailed(argv, None, partial if isinstance(partial, str) else partial.decode(errors="replace"),
                            hint) from None
    except OSError as err:   # not installed, not executable
        raise CommandFailed(argv, 127, f"{err.strerror}: {argv[0]}", hint) from None
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, output or "", hint)
    return result


def _run_merged(argv: list[str], stream: bool, env: dict, cwd: Path | None) -> subprocess.CompletedProcess:
    """stdout and stderr merged, line by line: shown live or kept for the error."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    show = stream or log.isEnabledFor(logging.DEBUG)
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", cwd=cwd, env=env) as proc:
        for line in proc.stdout:
            tail.append(line)
            if show:
                sys.stderr.write("    " + line)
    return subprocess.CompletedProcess(argv, proc.returncode, None, "".join(tail))
