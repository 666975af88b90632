"""berglas:// secrets, read by the real Cloud Storage and KMS clients from
the doubles in tests/doubles/ (or the real services: RACKBOOT_REAL_GOOGLE=1,
see tests/doubles/__init__.py). The secrets are written here exactly as
berglas's storage backend writes them (pkg/berglas create): a random 256-bit
DEK, AES-256-GCM with a random 12-byte nonce prepended to the sealed value,
the DEK encrypted by Cloud KMS with the object name as additional
authenticated data, and the object stored as base64(encrypted DEK) ":"
base64(nonce || ciphertext) with metadata berglas-kms-key and berglas-secret."""

import base64
import logging
import os
import re
import subprocess
import types

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from firstboot import secretref, secrets
from tests import doubles
from tests.doubles.kms import KmsDouble
from tests.doubles.storage import StorageDouble

BUCKET = doubles.google_names().bucket
KEY = doubles.google_names().kms_key
TOKEN = b"K10berglas::server:rack-token-not-for-logs"


class RealKms:
    """The KMS double's interface over the real key (RACKBOOT_REAL_GOOGLE=1; untested here)."""

    def create_key(self, name: str) -> str:
        return name                          # RACKBOOT_TEST_KMS_KEY exists already

    @property
    def decrypts(self):
        pytest.skip("counts decryptions: needs the KMS double")


@pytest.fixture
def google(monkeypatch):
    """The bucket, the KMS double and the storage double (None against the real services)."""
    if doubles.real_google():
        doubles.use_real_google(monkeypatch)
        yield types.SimpleNamespace(bucket=secrets._storage_client().bucket(BUCKET), kms=RealKms(), storage=None)
        return
    storage_double, kms_double = StorageDouble(), KmsDouble()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_double.start())
    monkeypatch.setenv("RACKBOOT_KMS_EMULATOR_HOST", kms_double.start())
    kms_double.create_key(KEY)
    bucket = secrets._storage_client().bucket(BUCKET)
    bucket.versioning_enabled = True            # as `berglas bootstrap` creates its bucket
    bucket.create()
    yield types.SimpleNamespace(bucket=bucket, kms=kms_double, storage=storage_double)
    kms_double.stop()
    storage_double.stop()


@pytest.fixture
def cloud(google):
    return google.bucket, google.kms


def berglas_create(bucket, name: str, plaintext: bytes, key: str = KEY) -> int:
    """What `berglas create BUCKET/NAME VALUE --key KEY` stores."""
    dek = os.urandom(32)
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(dek).encrypt(nonce, plaintext, None)
    encrypted_dek = secrets._kms_client().encrypt(
        request={"name": key, "plaintext": dek, "additional_authenticated_data": name.encode()}).ciphertext
    blob = bucket.blob(name)
    blob.metadata = {"berglas-kms-key": key, "berglas-secret": "1"}
    blob.upload_from_string(base64.b64encode(encrypted_dek) + b":" + base64.b64encode(sealed),
                            content_type="text/plain")
    return blob.generation


def test_reads_a_secret_written_the_berglas_way(cloud, caplog):
    bucket, kms = cloud
    berglas_create(bucket, "etc/k3s-node-token", TOKEN)
    with caplog.at_level(logging.DEBUG):
        assert secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token")) == TOKEN
    assert kms.decrypts == [KEY]
    assert TOKEN.decode() not in caplog.text


def test_the_object_name_is_bound_to_its_data_key(cloud):
    """A berglas object copied under another name does not decrypt: KMS
    checks the object name given as additional authenticated data."""
    bucket, _ = cloud
    berglas_create(bucket, "etc/k3s-node-token", TOKEN)
    bucket.copy_blob(bucket.get_blob("etc/k3s-node-token"), bucket, "etc/copied")
    with pytest.raises(secrets.SecretError, match=rf"berglas://{BUCKET}/etc/copied: InvalidArgument") as caught:
        secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/copied"), sleep=pytest.fail)
    assert TOKEN.decode() not in str(caught.value)


def test_tampered_ciphertext_is_refused(cloud):
    bucket, _ = cloud
    berglas_create(bucket, "etc/k3s-node-token", TOKEN)
    blob = bucket.get_blob("etc/k3s-node-token")
    dek, sealed = blob.download_as_bytes().split(b":")
    raw = bytearray(base64.b64decode(sealed))
    raw[-1] ^= 1
    blob.upload_from_string(dek + b":" + base64.b64encode(bytes(raw)))
    with pytest.raises(secrets.SecretError, match="does not decrypt with its data key"):
        secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token"))


@pytest.mark.parametrize("metadata, body, message", [
    (None, b"plain text", "not a berglas secret (no berglas-kms-key metadata)"),
    ({"berglas-kms-key": KEY}, b"no-colon-here", "not in berglas's format"),
])
def test_objects_that_are_not_berglas_secrets(cloud, metadata, body, message):
    bucket, _ = cloud
    blob = bucket.blob("etc/other")
    blob.metadata = metadata
    blob.upload_from_string(body)
    with pytest.raises(secrets.SecretError, match=re.escape(f"berglas://{BUCKET}/etc/other: ") + ".*" + re.escape(message)):
        secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/other"))


def test_missing_object_fails_at_once(cloud):
    with pytest.raises(secrets.SecretError, match=rf"berglas://{BUCKET}/etc/absent: NotFound") as caught:
        secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/absent"), sleep=pytest.fail)
    assert "objectViewer" in caught.value.hint


def test_unreachable_storage_is_transient(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    with pytest.raises(secrets.SecretError, match=rf"berglas://{BUCKET}/etc/k3s-node-token: .*gave up after 2"):
        secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token"), delays=(0,), sleep=lambda _: None)


def test_kubernetes_secret_yaml_in_berglas(cloud):
    """The original team's way: a Kubernetes Secret YAML stored in berglas,
    base64-encoded (`base64 --wrap=0 | berglas update`); a plain one too."""
    bucket, _ = cloud
    secret_yaml = b"apiVersion: v1\nkind: Secret\ndata:\n  key.json: " + base64.b64encode(b'{"k": 1}') + b"\n"
    ref = secretref.parse(f"berglas://{BUCKET}/etc/alert-to-pubsub", key="key.json")
    berglas_create(bucket, "etc/alert-to-pubsub", base64.b64encode(secret_yaml))
    assert secrets.access(ref) == b'{"k": 1}'
    berglas_create(bucket, "etc/alert-to-pubsub", secret_yaml)
    assert secrets.access(ref) == b'{"k": 1}'


def test_pinned_generation_reads_that_generation(cloud):
    """berglas://BUCKET/OBJECT#GENERATION: an older generation of a versioned
    bucket's object, as `berglas access` reads it."""
    bucket, _ = cloud
    first = berglas_create(bucket, "etc/k3s-node-token", b"first-token")
    second = berglas_create(bucket, "etc/k3s-node-token", TOKEN)
    assert first != second
    assert secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token")) == TOKEN
    assert secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token#{first}")) == b"first-token"
    assert secrets.access(secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token#{second}")) == TOKEN


def test_missing_generation_fails_at_once_naming_it(cloud):
    bucket, _ = cloud
    generation = berglas_create(bucket, "etc/k3s-node-token", TOKEN)
    ref = secretref.parse(f"berglas://{BUCKET}/etc/k3s-node-token#{generation + 1}")
    with pytest.raises(secrets.SecretError, match=re.escape(f"{ref}: NotFound")) as caught:
        secrets.access(ref, sleep=pytest.fail)
    assert "objectViewer" in caught.value.hint and TOKEN.decode() not in str(caught.value)


def test_unversioned_bucket_keeps_no_old_generation(cloud):
    """The double is no kinder than Cloud Storage: without Object Versioning
    an overwrite leaves only the new generation."""
    from google.api_core import exceptions
    if doubles.real_google():
        pytest.skip("creates a bucket: the double's own check")
    plain = secrets._storage_client().create_bucket("plain-bucket")
    old = plain.blob("obj")
    old.upload_from_string(b"old")
    new = plain.blob("obj")
    new.upload_from_string(b"new")
    with pytest.raises(exceptions.NotFound):
        plain.blob("obj", generation=old.generation).download_as_bytes()
    assert plain.blob("obj", generation=new.generation).download_as_bytes() == b"new"
