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


@pytest.mark.parametrize("verb", ["image", "netboot", "sdcard"])
def test_images_are_debian_13_unless_release_names_another(build, verb):
    """Debian 13 "trixie" by default, in build.py and in the modules the
    tests and benchmarks call; --release still takes bookworm."""
    import inspect
    from image import jumphost, netboot, rootfs, sdcard
    assert rootfs.DEFAULT_RELEASE == "trixie"
    assert jumphost.ImageOptions(output=None).release == rootfs.DEFAULT_RELEASE
    for module in (netboot, sdcard):
        assert inspect.signature(module.build).parameters["release"].default == rootfs.DEFAULT_RELEASE
    result = build(verb, "--help")
    assert result.returncode == 0 and "Debian release (default: trixie)" in " ".join(result.stdout.split())
    from image import cli
    [release] = [option for option in cli.ROOTFS if option.flags == ("--release",)]
    assert release.settings["type"]("bookworm") == "bookworm"


# ------------------------------------------------------------ --help installs nothing

VERBS = ["check", "render", "image", "seed", "fetch-k3s", "netboot", "sdcard", "boot", "clusters", "attach", "bundle",
         "make-ca", "push", "router"]


def test_every_verb_is_declared_with_its_preflight_and_run():
    from image import cli, verbs
    assert [verb.name for verb in cli.VERBS] == VERBS
    for verb in cli.VERBS:
        assert callable(getattr(verbs, f"preflight_{verb.function_suffix}"))
        assert callable(getattr(verbs, f"run_{verb.function_suffix}"))


@pytest.fixture
def no_setup(monkeypatch):
    """image/hostenv.py made to fail if anything calls it, and this process
    taken for one outside the virtualenv (where it would install)."""
    from image import hostenv

    def refuse(*args, **kwargs):
        raise AssertionError("hostenv was called")
    monkeypatch.setattr(hostenv, "in_venv", lambda: False)
    monkeypatch.delenv(hostenv.NO_BOOTSTRAP_ENV, raising=False)
    for name in ("ensure_venv", "ensure_tools", "prepare", "_install_packages", "_ensure_venv",
                 "_missing_packages"):
        monkeypatch.setattr(hostenv, name, refuse)


@pytest.mark.parametrize("argv", [["--help"], *([verb, "--help"] for verb in VERBS)])
def test_help_calls_no_setup(no_setup, capsys, argv):
    from image import cli
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: build.py")


@pytest.mark.parametrize("verb", VERBS)
def test_help_outside_the_venv_installs_nothing(tmp_path, verb):
    """As on a fresh machine: Debian's python3, and package tools that record
    any call (and fail). --help comes from the standard library alone."""
    import os
    import subprocess
    from tests.lib.machine import REPO
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("apt-get", "dpkg-query", "pip"):
        (fake_bin / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path / 'calls'}\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin"
    result = subprocess.run(["/usr/bin/python3", str(REPO / "build.py"), verb, "--help"], env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: build.py {verb}") and "rackboot setup" not in result.stderr
    assert not (tmp_path / "calls").exists()


def test_check_needs_no_build_tools(no_setup, monkeypatch, capsys):
    """check runs in the virtualenv (taken as given here) and installs no tool."""
    from image import cli, hostenv
    monkeypatch.setattr(hostenv, "ensure_venv", lambda: None)
    assert cli.main(["check", EXAMPLE]) == 0
    assert ": ok: rack example" in capsys.readouterr().out
