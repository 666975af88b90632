"""What a k3s binary says it is: the first line of `k3s --version`, which for
real k3s reads `k3s version v1.31.4+k3s1 (a562d090)`.

The build host can ask the binary for its own architecture only (the amd64
one on an amd64 host). That binary comes from a bundle, perhaps from a
tampered mirror, and the build runs as root; so it runs from a private copy
of exactly the verified bytes (image/k3s_bundle.py makes it), as nobody
when the build is root, with an empty environment and no input, in a process
group of its own that is killed after TIMEOUT seconds. Only the start of its
output is read. Not firstboot/commands.py's run(): that one runs trusted tools.
"""

import os
import platform
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from firstboot.errors import BadInput

HOST_ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
FIRST_LINE = re.compile(r"k3s version (?P<version>v\S+) \(.*\)")
TIMEOUT = 30
OUTPUT_LIMIT = 4096
NOBODY = 65534
HINT = "fetch the release again: ./build.py fetch-k3s VERSION -o DIR"


def host_arch() -> str | None:
    """The k3s architecture of the binaries this machine runs natively."""
    return HOST_ARCHES.get(platform.machine())


def _as_nobody() -> dict:
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def version_of(copy: Path, shown_as: Path) -> str:
    """The version the binary at copy says it is; errors name it shown_as
    (the bundle's file that copy was made from)."""
    work = copy.parent
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen([str(copy), "--version"], stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, cwd=work, start_new_session=True,
                                       env={"PATH": "/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C.UTF-8"},
                                       **_as_nobody())
        except OSError as err:
            raise BadInput(f"{shown_as}: cannot run it to ask its version ({err.strerror}); the k3s "
                           f"binary for this machine's architecture must run here", hint=HINT) from None
        try:
            status = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            _kill_group(process)     # and whatever it left running
        if status is None:
            raise BadInput(f"{shown_as}: `k3s --version` did not finish in {TIMEOUT} s; not a k3s binary",
                           hint=HINT)
        output.seek(0)
        text = output.read(OUTPUT_LIMIT).decode("utf-8", errors="replace")
    first = text.split("\n", 1)[0]
    if status != 0:
        raise BadInput(f"{shown_as}: `k3s --version` failed (exit status {status}): {first[:200]!r}",
                       hint=HINT)
    match = FIRST_LINE.fullmatch(first)
    if not match:
        raise BadInput(f"{shown_as}: `k3s --version` printed {first[:200]!r}, not `k3s version VERSION (...)`; "
                       "not a k3s binary", hint=HINT)
    return match["version"]
