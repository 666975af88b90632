"""Where the agent keeps what it has done: one status file (status.json in
Layout.state_dir), rewritten atomically after every step, so
`python -m firstboot status` (and a person reading it) always sees a whole
picture."""

import json
import time
from pathlib import Path

from firstboot.layout import Layout
from firstboot.system import place


def status_path(layout: Layout) -> Path:
    return layout.state_dir / "status.json"


def load(layout: Layout) -> dict:
    try:
        return json.loads(status_path(layout).read_text())
    except FileNotFoundError:
        return {"steps": {}}


def save(layout: Layout, status: dict) -> None:
    status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    place((json.dumps(status, indent=2, sort_keys=True) + "\n").encode(), status_path(layout), 0o644)
