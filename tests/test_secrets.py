"""Secrets through the real client libraries, against the doubles in
tests/doubles/ (or the real services: RACKBOOT_REAL_GOOGLE=1, see
tests/doubles/__init__.py)."""

import base64
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firstboot import secretref, secrets
from tests import doubles
from tests.doubles.secret_manager import RealSecretManager, SecretManagerDouble

REPO = Path(__file__).resolve().parent.parent
TOKEN = b"K10-this-is-a-test-token::server:5ecret-value-never-logged"
PROJECT = doubles.google_names().project


@pytest.fixture
def sm(monkeypatch):
    if doubles.real_google():
        doubles.use_real_google(monkeypatch)
        yield RealSecretManager()
        return
    double = SecretManagerDouble()
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", double.start())
    yield double
    double.stop()


def no_sleep(_):
    pass


def test_secret_manager_latest_and_pinned_version(sm):
    sm.add(PROJECT, "k3s-token", b"old")
    sm.add(PROJECT, "k3s-token", TOKEN)
    assert secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token")) == TOKEN
    assert secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token#1")) == b"old"
    assert sm.calls == [f"projects/{PROJECT}/secrets/k3s-token/versions/latest",
                        f"projects/{PROJECT}/secrets/k3s-token/versions/1"]


def test_unavailable_for_a_while_then_back(sm, caplog):
    sm.add(PROJECT, "k3s-token", TOKEN)
    sm.fail_next(3)
    waits = []
    with caplog.at_level(logging.WARNING):
        assert secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token"), sleep=waits.append) == TOKEN
    assert waits == [1, 2, 4] and len(sm.calls) == 4
    assert "ServiceUnavailable; retrying in 1 s" in caplog.text
    assert TOKEN.decode() not in caplog.text


def test_gives_up_naming_the_reference(sm):
    sm.add(PROJECT, "k3s-token", TOKEN)
    sm.fail_next(10)
    with pytest.raises(secrets.SecretError, match=rf"sm://{PROJECT}/k3s-token: ServiceUnavailable "
                                                  r"\(gave up after 3 attempts\)"):
        secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token"), delays=(0, 0), sleep=no_sleep)


@pytest.mark.parametrize("setup, expected", [
    (lambda sm: None, f"sm://{PROJECT}/missing: NotFound"),
    (lambda sm: sm.denied.add(f"projects/{PROJECT}/secrets/missing"), f"sm://{PROJECT}/missing: PermissionDenied"),
])
def test_not_found_and_denied_fail_at_once(sm, setup, expected):
    setup(sm)
    with pytest.raises(secrets.SecretError, match=expected) as caught:
        secrets.access(secretref.parse(f"sm://{PROJECT}/missing"), sleep=pytest.fail)
    assert len(sm.calls) == 1
    assert "secretAccessor" in caught.value.hint


def test_unreachable_store_is_transient(monkeypatch):
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", "127.0.0.1:9")   # nothing listens
    with pytest.raises(secrets.SecretError, match="gave up after 2 attempts"):
        secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token"), delays=(0,), sleep=no_sleep)


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
    sm.add(PROJECT, "k3s-token", TOKEN)
    result = subprocess.run([sys.executable, "-m", "firstboot", "access", f"sm://{PROJECT}/k3s-token"],
                            cwd=REPO, capture_output=True, timeout=60,
                            env={**sm.client_env(), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == TOKEN and TOKEN not in result.stderr


def test_access_command_bad_reference():
    result = subprocess.run([sys.executable, "-m", "firstboot", "access", "sm://rackboot-test/a/b"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'a/b' is not a Secret Manager secret name" in result.stderr


def test_file_secret_at_the_size_cap_and_over_it(tmp_path):
    (tmp_path / "at-cap").write_bytes(b"k" * secrets.FILE_MAX_BYTES)
    assert len(secrets.access(secretref.parse(f"file://{tmp_path}/at-cap"))) == secrets.FILE_MAX_BYTES
    (tmp_path / "big").write_bytes(b"k" * (secrets.FILE_MAX_BYTES + 1))
    with pytest.raises(secrets.SecretError, match=r"/big: larger than 64 KiB, which no secret value is"):
        secrets.access(secretref.parse(f"file://{tmp_path}/big"))


@pytest.mark.parametrize("make, kind", [
    (lambda path: os.mkfifo(path), "a FIFO"),            # no writer: opening or reading it would block
    (lambda path: path.mkdir(), "a directory"),
    (lambda path: path.symlink_to("/dev/zero"), "a character device"),    # endless
])
def test_file_secret_refuses_what_is_not_a_regular_file_without_blocking(tmp_path, make, kind):
    make(tmp_path / "odd")
    start = time.monotonic()
    with pytest.raises(secrets.SecretError, match=f"/odd: not a regular file \\({kind}\\)"):
        secrets.access(secretref.parse(f"file://{tmp_path}/odd"), sleep=pytest.fail)
    assert time.monotonic() - start < 2


def test_file_secret_through_a_symlink_to_a_regular_file(tmp_path):
    """As Kubernetes mounts Secrets: ..data/KEY behind a link."""
    (tmp_path / "real").write_bytes(TOKEN)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert secrets.access(secretref.parse(f"file://{tmp_path}/link")) == TOKEN


def test_file_secret_that_becomes_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    """The descriptor is checked too: a FIFO swapped in between stat and open
    is refused, not waited on."""
    path = tmp_path / "swapped"
    os.mkfifo(path)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(secrets.os, "stat", lambda p, *a, **k: regular if str(p) == str(path) else real_stat(p, *a, **k))
    start = time.monotonic()
    with pytest.raises(secrets.SecretError, match=r"/swapped: not a regular file \(a FIFO\)"):
        secrets.access(secretref.parse(f"file://{path}"))
    assert time.monotonic() - start < 2


def test_payload_checksum_is_sent_and_matches(sm):
    """The double sends data_crc32c as the service does; the value read is checked against it."""
    import google_crc32c
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport)
    sm.add(PROJECT, "k3s-token", TOKEN)
    client = secrets._google_client(secretmanager_v1.SecretManagerServiceClient, SecretManagerServiceGrpcTransport,
                                    "SECRET_MANAGER_EMULATOR_HOST", "RACKBOOT_SECRET_MANAGER_ENDPOINT")
    payload = client.access_secret_version(name=f"projects/{PROJECT}/secrets/k3s-token/versions/latest").payload
    assert "data_crc32c" in payload and payload.data_crc32c == google_crc32c.value(TOKEN)
    assert secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token")) == TOKEN


def test_payload_that_does_not_match_its_checksum_is_refused(sm, caplog):
    sm.add(PROJECT, "k3s-token", TOKEN)
    sm.corrupt_checksum(PROJECT, "k3s-token")
    with caplog.at_level(logging.DEBUG), pytest.raises(
            secrets.SecretError, match=rf"^sm://{PROJECT}/k3s-token: the value read does not match "
                                       r"its checksum \(data_crc32c\)") as caught:
        secrets.access(secretref.parse(f"sm://{PROJECT}/k3s-token"), sleep=pytest.fail)
    assert TOKEN.decode() not in str(caught.value) + caught.value.hint + caplog.text


def test_kubernetes_secret_yaml_stored_the_teams_way_is_decoded_first(tmp_path):
    """The original team's scripts store `kubectl create secret -o yaml | base64
    --wrap=0` and read it back with `berglas access | base64 --decode`: the
    stored value is the Secret YAML, base64-encoded (with or without a final newline)."""
    secret_yaml = (b"apiVersion: v1\nkind: Secret\nmetadata: {name: k3s}\ntype: Opaque\ndata:\n  token: "
                   + base64.b64encode(TOKEN) + b"\n")
    for stored in (base64.b64encode(secret_yaml), base64.b64encode(secret_yaml) + b"\n"):
        (tmp_path / "stored").write_bytes(stored)
        assert secrets.access(secretref.parse(f"file://{tmp_path}/stored", key="token")) == TOKEN
    # base64 of something that is not a Secret YAML is refused, naming the reference only
    (tmp_path / "stored").write_bytes(base64.b64encode(TOKEN))
    with pytest.raises(secrets.SecretError, match=r"stored: the stored value is not a Kubernetes Secret YAML") as caught:
        secrets.access(secretref.parse(f"file://{tmp_path}/stored", key="token"))
    assert TOKEN.decode() not in str(caught.value)


# --- listing a prefix (firstboot/secret_listing.py) ----------------------------

def test_secret_manager_prefix_is_listed_over_several_pages(sm):
    """ListSecrets has no prefix: every secret of the project comes back, a
    page at a time, named under the project's number; the IDs are filtered as
    berglas filters them."""
    from firstboot import secret_listing
    for name in ("skolo-rack4-b", "skolo-rack4-a", "skolo-rack3-x", "k3s-token", "skolo-rack4-c"):
        sm.add(PROJECT, name, b"value-never-listed")
    if isinstance(sm, SecretManagerDouble):
        sm.page_cap = 2
    listing = secret_listing.list_prefix(secretref.parse_prefix(f"sm://{PROJECT}/skolo-rack4-"))
    assert [(s.stored_name, str(s.ref)) for s in listing.secrets] == [
        ("a", f"sm://{PROJECT}/skolo-rack4-a"), ("b", f"sm://{PROJECT}/skolo-rack4-b"),
        ("c", f"sm://{PROJECT}/skolo-rack4-c")]
    assert sm.list_calls[0] == (f"projects/{PROJECT}", secret_listing.PAGE_SIZE, "")
    assert len(sm.list_calls) == 3 and all(token for _, _, token in sm.list_calls[1:])
    assert sm.calls == []                         # listing reads no value


def test_secret_manager_double_refuses_a_page_token_it_did_not_give(sm):
    from google.api_core import exceptions
    sm.add(PROJECT, "a", b"1")
    client = secrets._secret_manager_client()
    with pytest.raises(exceptions.InvalidArgument):
        list(client.list_secrets(request={"parent": f"projects/{PROJECT}", "page_token": "forged"}))
    [secret] = client.list_secrets(request={"parent": f"projects/{PROJECT}"})
    assert secret.name.startswith("projects/") and secret.name.endswith("/secrets/a")


def test_secret_manager_listing_unavailable_for_a_while_then_back(sm):
    from firstboot import secret_listing
    sm.add(PROJECT, "skolo-rack4-a", b"1")
    sm.fail_next(2)
    waits = []
    listing = secret_listing.list_prefix(secretref.parse_prefix(f"sm://{PROJECT}/skolo-rack4-"), sleep=waits.append)
    assert [s.stored_name for s in listing.secrets] == ["a"] and waits == [1, 2]


def test_secret_manager_import_of_secrets_stored_the_teams_way(sm):
    from firstboot import secret_import
    from firstboot.profile.model import SecretImport
    secret_yaml = b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: power-cycle\ndata:\n  password: " + \
        base64.b64encode(TOKEN) + b"\n"
    sm.add(PROJECT, "skolo-rack4-power-cycle", base64.b64encode(secret_yaml) + b"\n")
    spec = SecretImport(secretref.parse_prefix(f"sm://{PROJECT}/skolo-rack4-"), "skolo", ("power-cycle",), ())
    [body] = secret_import.imported_secrets(spec)
    assert body == {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "power-cycle", "namespace": "skolo"},
                    "data": {"password": base64.b64encode(TOKEN).decode()}}


def test_file_prefix_lists_the_regular_files_of_a_directory(tmp_path):
    from firstboot import secret_listing
    (tmp_path / "b").write_bytes(b"1")
    (tmp_path / "a").write_bytes(b"2")
    (tmp_path / "sub").mkdir()
    listing = secret_listing.list_prefix(secretref.parse_prefix(f"file://{tmp_path}/"))
    assert [(s.stored_name, str(s.ref)) for s in listing.secrets] == [("a", f"file://{tmp_path}/a"),
                                                                       ("b", f"file://{tmp_path}/b")]
    assert listing.skipped == ("sub",)
    with pytest.raises(secrets.SecretError, match="absent/: no such directory"):
        secret_listing.list_prefix(secretref.parse_prefix(f"file://{tmp_path}/absent/"))


@pytest.mark.parametrize("text, message", [
    ("berglas://skia-secrets/skolo-rack4", "a berglas prefix is a folder ending in '/'"),
    ("berglas://skia-secrets/", "a berglas prefix is a folder ending in '/'"),
    ("berglas://Bad_Bucket/x/", "is not a Cloud Storage bucket name"),
    ("sm://rackboot-test/a/b", "is not the start of a Secret Manager secret name"),
    ("sm://x/rack-", "'x' is not a Google Cloud project ID"),
    ("file://relative/", "a file:// prefix is an absolute directory ending in '/'"),
    ("file:///etc/../secrets/", "a file:// prefix is an absolute directory ending in '/'"),
    ("gs://bucket/x/", "is not a secret prefix"),
    ("berglas://skia-secrets/x/#3", "no spaces, control characters or '#'"),
])
def test_bad_prefixes_are_refused_naming_them(text, message):
    with pytest.raises(secretref.SecretRefError, match=re.escape(message)):
        secretref.parse_prefix(text)
