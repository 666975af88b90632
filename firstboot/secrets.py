"""Read secret values by reference (see secretref.py), one backend per scheme.

    file://   a file on the machine (a lab without Google Cloud)
    sm://     Google Secret Manager, through google-cloud-secret-manager

Endpoints, for private endpoints and emulators:
    SECRET_MANAGER_EMULATOR_HOST=host:port   plaintext gRPC, no credentials
                                             (as STORAGE_EMULATOR_HOST for Cloud Storage)
    RACKBOOT_SECRET_MANAGER_ENDPOINT=host    another TLS endpoint, with credentials
Credentials are Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS
(a key provisioned on the seed) or the GCE metadata protocol.

Transient failures (unreachable, unavailable, deadline) are retried with
backoff; "not found" and "permission denied" fail at once. Every error names
the reference, never the value.
"""

import base64
import binascii
import logging
import os
import time
from collections.abc import Callable

import yaml

from firstboot.errors import RackbootError
from firstboot.secretref import SecretRef

log = logging.getLogger("rackboot.secrets")

RETRY_DELAYS = (1, 2, 4, 8, 15, 30, 30, 30)   # about two minutes in all


class SecretError(RackbootError):
    """A secret could not be read; permanent unless it is a TransientSecretError."""


class TransientSecretError(SecretError):
    pass


def _file(ref: SecretRef) -> bytes:
    try:
        with open(ref.name, "rb") as secret:
            return secret.read()
    except FileNotFoundError:
        raise SecretError(f"{ref}: no such file") from None
    except PermissionError:
        raise SecretError(f"{ref}: permission denied", hint="the agent runs as root; check the file's mode") from None


def _secret_manager_client():
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager_v1

    emulator = os.environ.get("SECRET_MANAGER_EMULATOR_HOST")
    if emulator:
        import grpc
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcTransport)
        transport = SecretManagerServiceGrpcTransport(
            channel=grpc.insecure_channel(emulator), credentials=AnonymousCredentials())
        return secretmanager_v1.SecretManagerServiceClient(transport=transport)
    endpoint = os.environ.get("RACKBOOT_SECRET_MANAGER_ENDPOINT")
    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    return secretmanager_v1.SecretManagerServiceClient(client_options=options)


def _secret_manager(ref: SecretRef) -> bytes:
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError, TransportError

    name = f"projects/{ref.location}/secrets/{ref.name}/versions/{ref.version or 'latest'}"
    try:
        client = _secret_manager_client()
        # retry=None: the retries are ours, so they are logged and bounded alike for every backend.
        response = client.access_secret_version(name=name, retry=None, timeout=30)
    except (exceptions.NotFound, exceptions.PermissionDenied, exceptions.Unauthenticated,
            exceptions.InvalidArgument, exceptions.FailedPrecondition) as err:
        raise SecretError(f"{ref}: {type(err).__name__} ({err.message})",
                          hint="check the reference, and that the machine's service account "
                               "may access it (roles/secretmanager.secretAccessor)") from None
    except DefaultCredentialsError as err:
        raise SecretError(f"{ref}: no Google credentials ({err})",
                          hint="provision a service account key (GOOGLE_APPLICATION_CREDENTIALS) "
                               "or run where the GCE metadata server answers") from None
    except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.InternalServerError,
            exceptions.TooManyRequests, exceptions.RetryError, TransportError) as err:
        raise TransientSecretError(f"{ref}: {type(err).__name__}") from None
    return bytes(response.payload.data)


BACKENDS: dict[str, Callable[[SecretRef], bytes]] = {
    "file": _file,
    "sm": _secret_manager,
}


def unwrap_kubernetes_secret(value: bytes, ref: SecretRef) -> bytes:
    """The original team stored values as a Kubernetes Secret YAML; take .data[key]."""
    try:
        document = yaml.safe_load(value)
        encoded = document["data"][ref.key]
        return base64.b64decode(encoded, validate=True)
    except (yaml.YAMLError, TypeError, KeyError, binascii.Error, ValueError):
        raise SecretError(f"{ref}: the stored value is not a Kubernetes Secret YAML with a "
                          f"base64 .data.{ref.key}") from None


def access(ref: SecretRef, delays=RETRY_DELAYS, sleep=time.sleep) -> bytes:
    """The secret's value. Retries transient failures, then gives up naming ref."""
    backend = BACKENDS.get(ref.scheme)
    if backend is None:
        raise SecretError(f"{ref}: this machine cannot read {ref.scheme}:// secrets")
    for attempt, delay in enumerate((*delays, None), start=1):
        try:
            value = backend(ref)
            break
        except TransientSecretError as err:
            if delay is None:
                raise SecretError(f"{err} (gave up after {attempt} attempts)",
                                  hint="is the secret store reachable from this machine? "
                                       "the agent retries at its next run") from None
            log.warning("%s; retrying in %s s (attempt %d)", err, delay, attempt)
            sleep(delay)
    return unwrap_kubernetes_secret(value, ref) if ref.key else value
