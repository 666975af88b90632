"""The set-up step both README commands start with (image/hostenv.py).

tests/run reads the virtualenv's interpreter from hostenv's stdout, so the
output of the installers it runs (apt-get, pip) must go to stderr: on a fresh
machine, where they really run, anything on stdout breaks `$(...)`.
"""

import os
import subprocess
import sys

from tests.lib.machine import REPO

INSTALL_WITH_NOISY_APT = """
import sys
sys.path.insert(0, {repo!r})
from image import hostenv
hostenv._install_packages(["some-package"])
"""


def test_installer_output_stays_off_stdout(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt = fake_bin / "apt-get"
    apt.write_text("#!/bin/sh\necho \"Setting up $* ...\"\necho apt-called >> \"$(dirname \"$0\")/calls\"\n")
    apt.chmod(0o755)
    result = subprocess.run([sys.executable, "-c", INSTALL_WITH_NOISY_APT.format(repo=str(REPO))],
                            env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
                            capture_output=True, text=True)
    if os.geteuid() != 0:
        assert result.returncode != 0 and "run as root" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    assert (fake_bin / "calls").read_text().count("apt-called") == 2     # update, install
    assert result.stdout == ""
    assert "Setting up install" in result.stderr


def test_prints_only_the_interpreter():
    result = subprocess.run([sys.executable, str(REPO / "image/hostenv.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.endswith("/.venv/bin/python") and os.access(line, os.X_OK)
