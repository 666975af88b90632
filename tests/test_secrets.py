"""Secrets through the real client libraries, against the doubles in
tests/doubles/ (or the real services: see each double's first line)."""

import base64
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot import secretref, secrets
from tests.doubles.secret_manager import SecretManagerDouble

REPO = Path(__file__).resolve().parent.parent
TOKEN = b"K10-this-is-a-test-token::server:5ecret-value-never-logged"


@pytest.fixture
def sm(monkeypatch):
    double = SecretManagerDouble()
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", double.start())
    yield double
    double.stop()


def no_sleep(_):
    pass


def test_secret_manager_latest_and_pinned_version(sm):
    sm.add("rackboot-test", "k3s-token", b"old")
    sm.add("rackboot-test", "k3s-token", TOKEN)
    assert secrets.access(secretref.parse("sm://rackboot-test/k3s-token")) == TOKEN
    assert secrets.access(secretref.parse("sm://rackboot-test/k3s-token#1")) == b"old"
    assert sm.calls == ["projects/rackboot-test/secrets/k3s-token/versions/latest",
                        "projects/rackboot-test/secrets/k3s-token/versions/1"]


def test_unavailable_for_a_while_then_back(sm, caplog):
    sm.add("rackboot-test", "k3s-token", TOKEN)
    sm.fail_next(3)
    waits = []
    with caplog.at_level(logging.WARNING):
        assert secrets.access(secretref.parse("sm://rackboot-test/k3s-token"), sleep=waits.append) == TOKEN
    assert waits == [1, 2, 4] and len(sm.calls) == 4
    assert "ServiceUnavailable; retrying in 1 s" in caplog.text
    assert TOKEN.decode() not in caplog.text


def test_gives_up_naming_the_reference(sm):
    sm.add("rackboot-test", "k3s-token", TOKEN)
    sm.fail_next(10)
    with pytest.raises(secrets.SecretError, match=r"sm://rackboot-test/k3s-token: ServiceUnavailable "
                                                  r"\(gave up after 3 attempts\)"):
        secrets.access(secretref.parse("sm://rackboot-test/k3s-token"), delays=(0, 0), sleep=no_sleep)


@pytest.mark.parametrize("setup, expected", [
    (lambda sm: None, "sm://rackboot-test/missing: NotFound"),
    (lambda sm: sm.denied.add("projects/rackboot-test/secrets/missing"), "sm://rackboot-test/missing: PermissionDenied"),
])
def test_not_found_and_denied_fail_at_once(sm, setup, expected):
    setup(sm)
    with pytest.raises(secrets.SecretError, match=expected) as caught:
        secrets.access(secretref.parse("sm://rackboot-test/missing"), sleep=pytest.fail)
    assert len(sm.calls) == 1
    assert "secretAccessor" in caught.value.hint


def test_unreachable_store_is_transient(monkeypatch):
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", "127.0.0.1:9")   # nothing listens
    with pytest.raises(secrets.SecretError, match="gave up after 2 attempts"):
        secrets.access(secretref.parse("sm://rackboot-test/k3s-token"), delays=(0,), sleep=no_sleep)


def test_file_secret(tmp_path):
    (tmp_path / "token").write_bytes(TOKEN)
    assert secrets.access(secretref.parse(f"file://{tmp_path}/token")) == TOKEN
    with pytest.raises(secrets.SecretError, match="no such file"):
        secrets.access(secretref.parse(f"file://{tmp_path}/absent"))


def test_kubernetes_secret_yaml_is_unwrapped(tmp_path):
    stored = (b"apiVersion: v1\nkind: Secret\nmetadata: {name: k3s}\ndata:\n  token: "
              + base64.b64encode(TOKEN) + b"\n")
    (tmp_path / "stored").write_bytes(stored)
    assert secrets.access(secretref.parse(f"file://{tmp_path}/stored", key="token")) == TOKEN
    with pytest.raises(secrets.SecretError, match=r"not a Kubernetes Secret YAML with a base64 \.data\.other") as caught:
        secrets.access(secretref.parse(f"file://{tmp_path}/stored", key="other"))
    assert TOKEN.decode() not in str(caught.value)


def test_access_command_prints_the_value_only(sm):
    sm.add("rackboot-test", "k3s-token", TOKEN)
    result = subprocess.run([sys.executable, "-m", "firstboot", "access", "sm://rackboot-test/k3s-token"],
                            cwd=REPO, capture_output=True, timeout=60,
                            env={"SECRET_MANAGER_EMULATOR_HOST": sm.address, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == TOKEN and TOKEN not in result.stderr


def test_access_command_bad_reference():
    result = subprocess.run([sys.executable, "-m", "firstboot", "access", "sm://rackboot-test/a/b"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'a/b' is not a Secret Manager secret name" in result.stderr
