import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_build(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run build.py as a user would (inside the venv, so no re-bootstrap)."""
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.fixture
def build():
    return run_build
