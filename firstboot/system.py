"""How the agent changes the machine: files placed atomically and only when
their content or mode differs (so a re-run changes nothing), and systemctl."""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from firstboot.errors import RackbootError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def place(content: bytes | Path, target: Path, mode: int) -> bool:
    """Make target hold content with mode; True if anything changed. Atomic."""
    same = False
    if target.exists():
        if isinstance(content, Path):
            same = target.stat().st_size == content.stat().st_size and sha256_file(target) == sha256_file(content)
        else:
            same = target.read_bytes() == content
        same = same and (target.stat().st_mode & 0o7777) == mode
    if same:
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


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["systemctl", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RackbootError(f"systemctl {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}",
                            hint="journalctl -u k3s -u k3s-agent says more")
    return result
