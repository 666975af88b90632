"""Command-line values outside profiles and output directories: each bad one
is refused by build.py (exit 2) naming the option, before anything is written."""

import time

import pytest

EXAMPLE = "rack-profiles/example.yaml"


@pytest.mark.parametrize("verb, option, value, message", [
    ("boot", "--ssh-port", "0", "'0' is not a TCP port"),
    ("boot", "--ssh-port", "70000", "'70000' is not a TCP port"),
    ("boot", "--ssh-port", "22.0", "'22.0' is not a TCP port"),
    ("boot", "--api-port", "-1", "'-1' is not a TCP port"),
    ("boot", "--api-port", "6443\n", "is not a TCP port"),
    ("boot", "--timeout", "0", "'0' is not a number of seconds above 0"),
    ("boot", "--timeout", "nan", "'nan' is not a number of seconds"),
    ("boot", "--timeout", "inf", "'inf' is not a number of seconds"),
    ("image", "--release", "../../etc", "'../../etc' is not a Debian release name"),
    ("netboot", "--release", "bookworm\n", "is not a Debian release name"),
    ("sdcard", "--release", "", "'' is not a Debian release name"),
])
def test_bad_option_values(build, tmp_path, verb, option, value, message):
    result = build(verb, EXAMPLE, "-o", str(tmp_path / "out"), option, value)
    assert result.returncode == 2, result.stderr
    assert f"argument {option}: " in result.stderr and message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["check", "render"])
def test_help_is_quick(build, verb):
    start = time.monotonic()
    result = build(verb, "--help")
    assert result.returncode == 0 and f"usage: build.py {verb}" in result.stdout
    assert time.monotonic() - start < 3
