"""Test doubles for the systems rackboot talks to; RACKBOOT_REAL_GOOGLE=1 (with the names below) points the Google tests at the real services instead (untested here), RACKBOOT_K3S_BUNDLE=DIR the k3s tests at real k3s.

Each double's module docstring says on its first line what it stands in for
and how to run the tests against that thing.

Against real Google Cloud (test_secrets.py, test_berglas.py). Untested here:
the machine these tests were written on has no Google project or credentials,
so this path has never run; expect to fix something the first time.
    RACKBOOT_REAL_GOOGLE=1   start no Google double, and unset the emulator
                             variables (SECRET_MANAGER_EMULATOR_HOST,
                             STORAGE_EMULATOR_HOST, RACKBOOT_KMS_EMULATOR_HOST)
    RACKBOOT_TEST_PROJECT    project whose Secret Manager the tests write
                             secrets into and read back (default rackboot-test)
    RACKBOOT_TEST_BUCKET     a Cloud Storage bucket for these tests only, with
                             Object Versioning on, as `berglas bootstrap` makes
                             its bucket (default skia-secrets)
    RACKBOOT_TEST_KMS_KEY    projects/P/locations/L/keyRings/R/cryptoKeys/K, a
                             symmetric key the credentials may use to encrypt
                             and decrypt
    Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, or
    `gcloud auth application-default login`, with roles to create secrets and
    versions, write and read the bucket, and use the key.
Tests that need what only a double can do (inject faults, count calls,
corrupt a checksum, create buckets) skip against the real services.
"""

import os
from dataclasses import dataclass

REAL_GOOGLE_ENV = "RACKBOOT_REAL_GOOGLE"
GOOGLE_EMULATOR_VARIABLES = ("SECRET_MANAGER_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "RACKBOOT_KMS_EMULATOR_HOST")


@dataclass(frozen=True)
class GoogleNames:
    project: str
    bucket: str
    kms_key: str


def real_google() -> bool:
    return os.environ.get(REAL_GOOGLE_ENV) == "1"


def google_names() -> GoogleNames:
    """The project, bucket and key the Google tests use: the environment's,
    or the doubles' defaults."""
    return GoogleNames(
        project=os.environ.get("RACKBOOT_TEST_PROJECT", "rackboot-test"),
        bucket=os.environ.get("RACKBOOT_TEST_BUCKET", "skia-secrets"),
        kms_key=os.environ.get("RACKBOOT_TEST_KMS_KEY",
                               "projects/skia-infra/locations/global/keyRings/berglas/cryptoKeys/berglas-key"))


def use_real_google(monkeypatch) -> None:
    """Against the real services: no emulator variable may divert the clients."""
    for name in GOOGLE_EMULATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
