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


# --- importing every secret under a prefix (firstboot/secret_import.py) -------

def team_store(bucket, cluster: str, name: str, secret_yaml: bytes) -> None:
    """kube/secrets/add-secret-from-stdin.sh CLUSTER NAME, with the Secret YAML
    on its stdin: `base64 --wrap=0 | awk '{ print $0 }' | berglas update
    BUCKET/CLUSTER/NAME -`, the same commands, then berglas's storage format."""
    encoded = subprocess.run(["base64", "--wrap=0"], input=secret_yaml, capture_output=True, check=True).stdout
    line = subprocess.run(["awk", "{ print $0 }"], input=encoded, capture_output=True, check=True).stdout
    berglas_create(bucket, f"{cluster}/{name}", line)


def kubectl_secret(name: str, secret_type: str | None = None, **data: bytes) -> bytes:
    """What `kubectl create secret ... --dry-run=client -o yaml` prints: keys sorted, no type for generic."""
    lines = ["apiVersion: v1", "data:"] + [f"  {key}: {base64.b64encode(value).decode()}"
                                           for key, value in sorted(data.items())]
    lines += ["kind: Secret", "metadata:", "  creationTimestamp: null", f"  name: {name}"]
    lines += [f"type: {secret_type}"] if secret_type else []
    return ("\n".join(lines) + "\n").encode()


DOCKER_CONFIG = b'{"auths":{"gcr.io":{"auth":"X2pzb25fa2V5OnNlY3JldA=="}}}'
TEAM_SECRETS = {
    "alert-to-pubsub": kubectl_secret("alert-to-pubsub", **{"key.json": b'{"k": 1}'}),
    "gcr-io-skia-public-pull": kubectl_secret("gcr-io-skia-public-pull", "kubernetes.io/dockerconfigjson",
                                              **{".dockerconfigjson": DOCKER_CONFIG}),
    "power-cycle": kubectl_secret("power-cycle", **{"password": b"hunter2-not-for-logs"}),
    "router-backup": kubectl_secret("router-backup", "kubernetes.io/ssh-auth", **{"ssh-privatekey": b"KEY"}),
    "skolo-metadata-sa": kubectl_secret("skolo-metadata-sa", **{"key.json": b'{"sa": 2}'}),
}


def rack4_import(namespace: str = "skolo", required=(), exclude=()):
    from firstboot.profile.model import SecretImport
    return SecretImport(secretref.parse_prefix(f"berglas://{BUCKET}/skolo-rack4/"), namespace, tuple(required),
                        tuple(exclude))


def test_a_prefix_is_imported_over_several_pages_with_names_and_types(google, caplog):
    from firstboot import secret_import
    for name, secret_yaml in TEAM_SECRETS.items():
        team_store(google.bucket, "skolo-rack4", name, secret_yaml)
    team_store(google.bucket, "skolo-rack3", "other-rack", kubectl_secret("other-rack", a=b"1"))
    google.bucket.blob("skolo-rack4/README").upload_from_string(b"not a berglas secret")   # berglas list skips it
    if google.storage:
        google.storage.storage.page_cap = 2      # the service may send fewer than asked: the client follows tokens
    with caplog.at_level(logging.DEBUG):
        bodies = secret_import.imported_secrets(rack4_import(required=["gcr-io-skia-public-pull"]))
    assert [(b["metadata"], b["type"]) for b in bodies] == [
        ({"name": "alert-to-pubsub", "namespace": "skolo"}, "Opaque"),
        ({"name": "gcr-io-skia-public-pull", "namespace": "skolo"}, "kubernetes.io/dockerconfigjson"),
        ({"name": "power-cycle", "namespace": "skolo"}, "Opaque"),
        ({"name": "router-backup", "namespace": "skolo"}, "kubernetes.io/ssh-auth"),
        ({"name": "skolo-metadata-sa", "namespace": "skolo"}, "Opaque")]
    assert base64.b64decode(bodies[1]["data"][".dockerconfigjson"]) == DOCKER_CONFIG
    assert base64.b64decode(bodies[2]["data"]["password"]) == b"hunter2-not-for-logs"
    assert "hunter2" not in caplog.text
    if google.storage:
        pages = google.storage.storage.list_requests
        assert [q.get("prefix") for q in pages] == ["skolo-rack4/"] * 3          # 6 objects, 2 a page
        assert "pageToken" not in pages[0] and pages[1]["pageToken"] and pages[2]["pageToken"]


def test_the_double_pages_as_cloud_storage_does(google):
    """At most maxResults and never more than the cap; no nextPageToken on the
    last page; a token the server did not give is 400."""
    from google.api_core import exceptions
    if not google.storage:
        pytest.skip("the storage double's own paging")
    for index in range(5):
        google.bucket.blob(f"p/{index}").upload_from_string(b"x")
    client = secrets._storage_client()
    pages = list(client.list_blobs(BUCKET, prefix="p/", page_size=2).pages)
    assert [[blob.name for blob in page] for page in pages] == [["p/0", "p/1"], ["p/2", "p/3"], ["p/4"]]
    google.storage.storage.page_cap = 1000
    assert len(list(client.list_blobs(BUCKET, prefix="p/", page_size=5000).pages)) == 1
    with pytest.raises(exceptions.BadRequest):
        list(client.list_blobs(BUCKET, prefix="p/", page_token="forged"))


@pytest.mark.parametrize("stored, message", [
    (kubectl_secret("other-name", a=b"1"), "its Secret YAML names the Secret 'other-name', but it is stored as "
                                           "'bad'; the stored name must be the Secret's name"),
    (kubectl_secret("bad", a=b"1").replace(b"metadata:\n", b"metadata:\n  namespace: kube-system\n"),
     "its Secret YAML is for namespace 'kube-system', but the profile imports it into 'skolo'"),
    (kubectl_secret("bad", a=b"1").replace(b"kind: Secret", b"kind: ConfigMap"),
     "the stored object is 'ConfigMap' in 'v1', not a v1 Secret"),
    (b"apiVersion: v1\nkind: Secret\ndata: {password: [hunter2-not-for-logs\n",
     "the stored value does not decode to YAML (line 4), plain or base64-encoded"),
    (kubectl_secret("bad", "kubernetes.io/dockerconfigjson", **{".dockerconfigjson": b"hunter2-not-for-logs"}),
     "data..dockerconfigjson is not a JSON object, as a kubernetes.io/dockerconfigjson Secret's must be"),
    (kubectl_secret("bad", a=b"1").replace(b"a: MQ==", b"a: hunter2-not-for-logs!"), "data.a is not base64"),
])
def test_a_stored_object_that_cannot_be_its_secret_is_refused_naming_it(google, stored, message):
    from firstboot import secret_import
    from firstboot.errors import BadInput
    team_store(google.bucket, "skolo-rack4", "alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    team_store(google.bucket, "skolo-rack4", "bad", stored)
    with pytest.raises(BadInput) as caught:
        secret_import.imported_secrets(rack4_import())
    generation = google.bucket.get_blob("skolo-rack4/bad").generation
    assert str(caught.value) == f"berglas://{BUCKET}/skolo-rack4/bad#{generation} (Secret bad): {message}"
    assert caught.value.exit_status == 2 and "add-secret-from-stdin.sh" in caught.value.hint
    assert "hunter2" not in str(caught.value) + caught.value.hint


def test_a_required_secret_missing_or_a_name_no_secret_can_have_is_refused(google):
    from firstboot import secret_import
    from firstboot.errors import BadInput
    team_store(google.bucket, "skolo-rack4", "alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    with pytest.raises(BadInput, match=re.escape(f"berglas://{BUCKET}/skolo-rack4/: holds no secret "
                                                 "gcr-io-skia-public-pull, which the profile requires "
                                                 "(it holds: alert-to-pubsub)")):
        secret_import.imported_secrets(rack4_import(required=["gcr-io-skia-public-pull"]))
    team_store(google.bucket, "skolo-rack4", "old/alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    with pytest.raises(BadInput, match=r"skolo-rack4/old/alert-to-pubsub#\d+: its name under .* \('old/alert-to-"
                                       r"pubsub'\) is not a Kubernetes Secret name"):
        secret_import.imported_secrets(rack4_import())


def test_a_prefix_in_a_bucket_that_does_not_exist_fails_at_once(google):
    from firstboot import secret_listing
    with pytest.raises(secrets.SecretError, match=r"^berglas://no-such-bucket/skolo-rack4/: NotFound") as caught:
        secret_listing.list_prefix(secretref.parse_prefix("berglas://no-such-bucket/skolo-rack4/"),
                                   sleep=pytest.fail)
    assert "objectViewer" in caught.value.hint


def test_an_excluded_stored_name_is_neither_read_nor_checked(google):
    from firstboot import secret_import
    team_store(google.bucket, "skolo-rack4", "alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    team_store(google.bucket, "skolo-rack4", "legacy", kubectl_secret("named-otherwise", a=b"1"))
    if google.storage:
        google.kms.decrypts.clear()
    bodies = secret_import.imported_secrets(rack4_import(exclude=["legacy"]))
    assert [body["metadata"]["name"] for body in bodies] == ["alert-to-pubsub"]
    if google.storage:
        assert len(google.kms.decrypts) == 1                     # the excluded one was not read
