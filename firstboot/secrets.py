"""Read secret values by reference (see secretref.py), one backend per scheme.

    file://     a file on the machine (a lab without Google Cloud)
    sm://       Google Secret Manager, through google-cloud-secret-manager; the
                payload is checked against its data_crc32c (CRC32C), as Google asks
    berglas://  berglas's Cloud Storage + Cloud KMS envelope, decrypted as berglas
                does: object = base64(KMS-encrypted DEK) ":" base64(nonce || AES-256-GCM
                ciphertext+tag); the DEK is decrypted by the key named in the object's
                berglas-kms-key metadata, with the object name as additional data

Endpoints, for private endpoints and emulators:
    SECRET_MANAGER_EMULATOR_HOST=host:port   plaintext gRPC, no credentials
    RACKBOOT_SECRET_MANAGER_ENDPOINT=host    another TLS endpoint, with credentials
    STORAGE_EMULATOR_HOST=http://host:port   Cloud Storage's own convention
    RACKBOOT_KMS_EMULATOR_HOST=host:port     plaintext gRPC, no credentials
    RACKBOOT_KMS_ENDPOINT=host               another TLS endpoint, with credentials
Credentials are Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS
(a key provisioned on the seed) or the GCE metadata protocol.

Transient failures (unreachable, unavailable, deadline) are retried with
backoff; "not found" and "permission denied" fail at once. Every error names
the reference, never the value.
"""

import base64
import binascii
import contextlib
import logging
import os
import time
from collections.abc import Callable

import yaml

from firstboot import files
from firstboot.errors import RackbootError
from firstboot.secretref import SecretRef

log = logging.getLogger("rackboot.secrets")

RETRY_DELAYS = (1, 2, 4, 8, 15, 30, 30, 30)   # about two minutes in all


class SecretError(RackbootError):
    """A secret could not be read; permanent unless it is a TransientSecretError."""


class TransientSecretError(SecretError):
    pass


FILE_MAX_BYTES = 64 * 1024      # a token, a key file or a Secret YAML; more is not a secret reference


def _file(ref: SecretRef) -> bytes:
    """A regular file's bytes. Anything else is refused without being read or
    waited on (firstboot/files.py): a FIFO would block the agent, a device has
    no end (/dev/zero) or side effects, a directory is no value."""
    try:
        return files.read_regular(ref.name, FILE_MAX_BYTES)
    except files.NotRegularFile as err:
        raise SecretError(f"{ref}: not a regular file ({err.kind})",
                          hint="a file:// reference names a file holding the value") from None
    except files.TooLarge:
        raise SecretError(f"{ref}: larger than {FILE_MAX_BYTES // 1024} KiB, which no secret value is",
                          hint="check the reference: it should name the file holding the value") from None
    except FileNotFoundError:
        raise SecretError(f"{ref}: no such file") from None
    except PermissionError:
        raise SecretError(f"{ref}: permission denied", hint="the agent runs as root; check the file's mode") from None
    except OSError as err:
        raise SecretError(f"{ref}: {err.strerror}") from None


def _google_client(client_class, transport_class, emulator_env: str, endpoint_env: str):
    """A Google API client: plaintext gRPC without credentials to an emulator,
    or TLS with Application Default Credentials to an endpoint (default: Google's)."""
    from google.api_core.client_options import ClientOptions

    emulator = os.environ.get(emulator_env)
    if emulator:
        import grpc
        from google.auth.credentials import AnonymousCredentials
        return client_class(transport=transport_class(channel=grpc.insecure_channel(emulator),
                                                      credentials=AnonymousCredentials()))
    endpoint = os.environ.get(endpoint_env)
    return client_class(client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None)


def _secret_manager_client():
    from google.cloud import secretmanager_v1
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
        SecretManagerServiceGrpcTransport)
    return _google_client(secretmanager_v1.SecretManagerServiceClient, SecretManagerServiceGrpcTransport,
                          "SECRET_MANAGER_EMULATOR_HOST", "RACKBOOT_SECRET_MANAGER_ENDPOINT")


@contextlib.contextmanager
def _google_errors(ref: SecretRef, hint: str, transient: tuple[type[Exception], ...] = ()):
    """Google's errors as ours, alike for every backend: refusals (not found,
    no permission, a bad request) fail at once with hint; missing credentials
    fail at once; outages, deadlines and the transport's errors (and the
    caller's transient ones) are TransientSecretError, to be retried."""
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, TransportError

    try:
        yield
    except (exceptions.NotFound, exceptions.Forbidden, exceptions.Unauthorized,
            exceptions.InvalidArgument, exceptions.FailedPrecondition) as err:
        raise SecretError(f"{ref}: {type(err).__name__} ({err.message})", hint=hint) from None
    except DefaultCredentialsError as err:
        raise SecretError(f"{ref}: no Google credentials ({err})",
                          hint="provision a service account key (GOOGLE_APPLICATION_CREDENTIALS) "
                               "or run where the GCE metadata server answers") from None
    except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.InternalServerError,
            exceptions.TooManyRequests, exceptions.RetryError, TransportError, *transient) as err:
        raise TransientSecretError(f"{ref}: {type(err).__name__}") from None


def _secret_manager(ref: SecretRef) -> bytes:
    name = f"projects/{ref.location}/secrets/{ref.name}/versions/{ref.version or 'latest'}"
    with _google_errors(ref, hint="check the reference, and that the machine's service account "
                                  "may access it (roles/secretmanager.secretAccessor)"):
        client = _secret_manager_client()
        # retry=None: the retries are ours, so they are logged and bounded alike for every backend.
        response = client.access_secret_version(name=name, retry=None, timeout=30)
    _check_crc32c(ref, response.payload)
    return bytes(response.payload.data)


def _check_crc32c(ref: SecretRef, payload) -> None:
    """Google's integrity check for every access: payload.data_crc32c is the
    CRC32C of the data as stored. It is optional in the API, so checked
    when the service sent it."""
    import google_crc32c

    if "data_crc32c" in payload and google_crc32c.value(bytes(payload.data)) != payload.data_crc32c:
        raise SecretError(f"{ref}: the value read does not match its checksum (data_crc32c): "
                          "corrupted on the way or in the store",
                          hint="read it again; if it persists, add a new version of the secret")


def _kms_client():
    from google.cloud import kms_v1
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcTransport)
    return _google_client(kms_v1.KeyManagementServiceClient, KeyManagementServiceGrpcTransport,
                          "RACKBOOT_KMS_EMULATOR_HOST", "RACKBOOT_KMS_ENDPOINT")


def _storage_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project="rackboot", credentials=AnonymousCredentials())
    return storage.Client()


def _berglas(ref: SecretRef) -> bytes:
    import requests
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    hint = ("check the reference, and that the machine's service account may read the object "
            "(roles/storage.objectViewer) and use its key (roles/cloudkms.cryptoKeyDecrypter)")
    with _google_errors(ref, hint, transient=(requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        blob = _storage_client().bucket(ref.location).blob(
            ref.name, generation=int(ref.version) if ref.version else None)
        blob.reload(retry=None, timeout=30)     # our retries, as for every backend
        data = blob.download_as_bytes(retry=None, timeout=30)
        key = (blob.metadata or {}).get("berglas-kms-key")
        if not key:
            raise SecretError(f"{ref}: the object is not a berglas secret (no berglas-kms-key metadata)")
        try:
            encrypted_dek, payload = (base64.b64decode(part, validate=True) for part in data.split(b":", 1))
        except (ValueError, binascii.Error):
            raise SecretError(f"{ref}: the object is not in berglas's format "
                              "(base64 DEK ':' base64 ciphertext)") from None
        # berglas binds the data key to the object's name (KMS additional authenticated data).
        dek = _kms_client().decrypt(request={"name": key, "ciphertext": encrypted_dek,
                                             "additional_authenticated_data": ref.name.encode()},
                                    retry=None, timeout=30).plaintext
    nonce, ciphertext = payload[:12], payload[12:]
    try:
        return AESGCM(dek).decrypt(nonce, ciphertext, None)
    except (InvalidTag, ValueError):
        raise SecretError(f"{ref}: the value does not decrypt with its data key (corrupt or tampered)") from None


BACKENDS: dict[str, Callable[[SecretRef], bytes]] = {
    "file": _file,
    "sm": _secret_manager,
    "berglas": _berglas,
}


def secret_yaml(value: bytes) -> bytes:
    """The Kubernetes Secret YAML in a stored value. The original team's
    scripts store it base64-encoded (`kubectl create secret ... -o yaml |
    base64 --wrap=0 | berglas update`, read back with `berglas access |
    base64 --decode`); a plain YAML Secret is taken as it is. The two cannot
    be confused: a YAML mapping has a ':', which base64's alphabet lacks."""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return value


def unwrap_kubernetes_secret(value: bytes, ref: SecretRef) -> bytes:
    """The original team stored values as a Kubernetes Secret YAML (base64-
    encoded, see secret_yaml); take its base64 .data[key], decoded."""
    try:
        document = yaml.safe_load(secret_yaml(value))
        encoded = document["data"][ref.key]
        return base64.b64decode(encoded, validate=True)
    except (yaml.YAMLError, TypeError, KeyError, binascii.Error, ValueError):
        raise SecretError(f"{ref}: the stored value is not a Kubernetes Secret YAML with a base64 "
                          f".data.{ref.key} (plain, or base64-encoded as the team's scripts store it)") from None


def with_retries(what, call: Callable[[], object], delays=RETRY_DELAYS, sleep=time.sleep):
    """call(), retrying its TransientSecretErrors; then gives up naming what."""
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            return call()
        except TransientSecretError as err:
            if delay is None:
                raise SecretError(f"{err} (gave up after {attempt} attempts)",
                                  hint="is the secret store reachable from this machine? "
                                       "the agent retries at its next run") from None
            log.warning("%s; retrying in %s s (attempt %d)", err, delay, attempt)
            sleep(delay)


def access(ref: SecretRef, delays=RETRY_DELAYS, sleep=time.sleep) -> bytes:
    """The secret's value. Retries transient failures, then gives up naming ref."""
    backend = BACKENDS.get(ref.scheme)
    if backend is None:
        raise SecretError(f"{ref}: this machine cannot read {ref.scheme}:// secrets")
    value = with_retries(ref, lambda: backend(ref), delays, sleep)
    return unwrap_kubernetes_secret(value, ref) if ref.key else value
