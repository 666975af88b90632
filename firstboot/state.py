"""Where the agent keeps what it has done: one status file, rewritten
atomically after every step, so `python -m firstboot status` (and a person
reading /var/lib/rackboot/status.json) always sees a whole picture."""

import json
import os
import tempfile
import time
from pathlib import Path

STATE_DIR = Path(os.environ.get("RACKBOOT_STATE_DIR", "/var/lib/rackboot"))


def status_path() -> Path:
    return STATE_DIR / "status.json"


def load() -> dict:
    try:
        return json.loads(status_path().read_text())
    except FileNotFoundError:
        return {"steps": {}}


def save(status: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fd, tmp = tempfile.mkstemp(dir=STATE_DIR, prefix=".status.")
    with os.fdopen(fd, "w") as out:
        json.dump(status, out, indent=2, sort_keys=True)
        out.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, status_path())
