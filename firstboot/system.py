"""How the agent changes the machine: files placed atomically and only when
their content or mode differs (so a re-run changes nothing), and systemd's
units through systemctl (firstboot.commands.run, like every command)."""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from firstboot.commands import run
from firstboot.errors import RackbootError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same(content: bytes | Path, target: Path, mode: int) -> bool:
    if not target.exists() or (target.stat().st_mode & 0o7777) != mode:
        return False
    if isinstance(content, Path):
        return target.stat().st_size == content.stat().st_size and sha256_file(target) == sha256_file(content)
    return target.read_bytes() == content


def place(content: bytes | Path, target: Path, mode: int) -> bool:
    """Make target hold content (bytes, or a file's) with mode; True if
    anything changed. Stage-then-replace: a temporary file beside target,
    written, synced and renamed over it, so target is always whole (the
    agent's one way of writing a file)."""
    if _same(content, target, mode):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, Path):
                with open(content, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def place_file(source: Path, target: Path, mode: int = 0o644) -> bool:
    """place() for a whole file, missing source named as such."""
    if not source.exists():
        raise RackbootError(f"{source}: missing from this image", hint="rebuild the image")
    return place(source.read_bytes(), target, mode)


def systemctl(*args: str, check: bool = True, hint: str | None = None) -> subprocess.CompletedProcess:
    """systemctl ARGS, its output captured; hint: what to look at when it fails."""
    return run(["systemctl", *args], capture=True, check=check,
               hint=hint or "systemctl status and journalctl -b say more")


def is_active(unit: str) -> bool:
    return systemctl("is-active", "--quiet", unit, check=False).returncode == 0


def ensure_running(unit: str, restart: bool) -> str:
    """Enable unit and have it running: started when it is not, restarted
    when restart (its files or inputs changed) and it is. --no-block: a unit
    may take long to start (k3s's has no start timeout); the callers wait for
    it with deadlines of their own. Returns "started", "restarted" or
    "unchanged"."""
    hint = f"journalctl -u {unit} says more"
    systemctl("enable", unit, hint=hint)
    if not is_active(unit):
        # restart, not start, when its inputs changed: a unit still starting
        # (activating) may have read the old ones, and start would leave it so.
        systemctl("restart" if restart else "start", "--no-block", unit, hint=hint)
        return "started"
    if restart:
        systemctl("restart", "--no-block", unit, hint=hint)
        return "restarted"
    return "unchanged"
