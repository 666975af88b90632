"""Stands in for Google Secret Manager (secretmanager.googleapis.com, gRPC); against the real service (untested here): RACKBOOT_REAL_GOOGLE=1 RACKBOOT_TEST_PROJECT=P with Application Default Credentials (tests/doubles/__init__.py).

A gRPC server speaking google.cloud.secretmanager.v1.SecretManagerService's
AccessSecretVersion and ListSecrets with the client library's own message
types, so the agent's real client talks its real protocol to it. ListSecrets
answers as the service does: every secret of the project (there is no
prefix; berglas filters the IDs itself), names under the project's number
(projects/NUMBER/secrets/ID, whichever of ID or number the request named),
at most page_size per page (0: the server's choice, page_cap; more than
25000: 25000), next_page_token opaque and INVALID_ARGUMENT for one the server
did not give. Every payload carries
data_crc32c, the CRC32C of its data, as the real service sends it. Faults can
be injected: the next N calls answer a status code (UNAVAILABLE,
PERMISSION_DENIED, ...), and a secret's checksum can be corrupted (what a
payload damaged on the way looks like to the client).
"""

import base64
import binascii
import os
import threading
from concurrent import futures

import google_crc32c
import grpc
import pytest
from google.cloud.secretmanager_v1 import types

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
MAX_PAGE_SIZE = 25000
PROJECT_NUMBER = "614372858123"        # the number every project of the double has
TOKEN_MARK = "CgZwYWdl"                # how the double's page tokens start


class SecretManagerDouble:
    def __init__(self):
        self.secrets: dict[str, list[bytes]] = {}     # "projects/P/secrets/N" -> versions 1..n
        self.denied: set[str] = set()
        self.corrupted: set[str] = set()          # secrets whose payloads carry a wrong data_crc32c
        self.calls: list[str] = []
        self.list_calls: list[tuple[str, int, str]] = []     # (parent, page_size, page_token)
        self.page_cap = MAX_PAGE_SIZE         # the most per page the server chooses to send
        self._faults: list[grpc.StatusCode] = []
        self._lock = threading.Lock()
        self._server = None
        self.address = None

    def add(self, project: str, name: str, value: bytes) -> None:
        self.secrets.setdefault(f"projects/{project}/secrets/{name}", []).append(value)

    def corrupt_checksum(self, project: str, name: str) -> None:
        """From now on, the secret's payloads carry a data_crc32c their data does not have."""
        self.corrupted.add(f"projects/{project}/secrets/{name}")

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        with self._lock:
            self._faults += [code] * count

    def recover(self) -> None:
        """Drop the faults still ordered: the store is back."""
        with self._lock:
            self._faults.clear()

    def _access(self, request: types.AccessSecretVersionRequest, context) -> types.AccessSecretVersionResponse:
        with self._lock:
            self.calls.append(request.name)
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            context.abort(fault, f"injected {fault.name}")
        secret, _, version = request.name.rpartition("/versions/")
        if secret in self.denied:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on {secret}")
        versions = self.secrets.get(secret)
        if not versions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret [{secret}] not found or has no versions.")
        index = len(versions) if version == "latest" else int(version)
        if not 1 <= index <= len(versions):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Secret Version [{request.name}] not found.")
        data = versions[index - 1]
        checksum = google_crc32c.value(data) ^ (1 if secret in self.corrupted else 0)
        return types.AccessSecretVersionResponse(
            name=f"{secret}/versions/{index}", payload=types.SecretPayload(data=data, data_crc32c=checksum))

    def _list(self, request: types.ListSecretsRequest, context) -> types.ListSecretsResponse:
        with self._lock:
            self.list_calls.append((request.parent, request.page_size, request.page_token))
            fault = self._faults.pop(0) if self._faults else None
        if fault:
            context.abort(fault, f"injected {fault.name}")
        project = request.parent.removeprefix("projects/")
        if not request.parent.startswith("projects/") or "/" in project or not project:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid resource field value in the request: parent")
        if request.filter:       # the service evaluates filters; the double does not, so refuses them
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "the Secret Manager double evaluates no filter")
        if request.page_size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        ids = sorted(name.rpartition("/")[2] for name in self.secrets
                     if name.split("/")[1] == project or project == PROJECT_NUMBER)
        start = self._page_start(request.page_token, ids, context)
        size = min(request.page_size or self.page_cap, self.page_cap, MAX_PAGE_SIZE)
        page = ids[start:start + size]
        more = start + size < len(ids)
        return types.ListSecretsResponse(
            secrets=[types.Secret(name=f"projects/{PROJECT_NUMBER}/secrets/{secret_id}",
                                  replication=types.Replication(automatic=types.Replication.Automatic()))
                     for secret_id in page],
            next_page_token=TOKEN_MARK + base64.urlsafe_b64encode(page[-1].encode()).decode() if more else "",
            total_size=len(ids))

    @staticmethod
    def _page_start(token: str, ids: list[str], context) -> int:
        """Where a page starts: after the ID the token names (an opaque token of the server's own)."""
        if not token:
            return 0
        try:
            if not token.startswith(TOKEN_MARK):
                raise ValueError(token)
            after = base64.urlsafe_b64decode(token.removeprefix(TOKEN_MARK).encode()).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid page token.")
        return sum(1 for secret_id in ids if secret_id <= after)

    def start(self) -> str:
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "ListSecrets": grpc.unary_unary_rpc_method_handler(
                self._list,
                request_deserializer=types.ListSecretsRequest.deserialize,
                response_serializer=types.ListSecretsResponse.serialize),
            "AccessSecretVersion": grpc.unary_unary_rpc_method_handler(
                self._access,
                request_deserializer=types.AccessSecretVersionRequest.deserialize,
                response_serializer=types.AccessSecretVersionResponse.serialize),
        })
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((handler,))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        if self._server:
            self._server.stop(grace=None)

    def client_env(self) -> dict[str, str]:
        """What a client in another process needs to reach this double."""
        return {"SECRET_MANAGER_EMULATOR_HOST": self.address}


class RealSecretManager:
    """The double's interface over the real service (RACKBOOT_REAL_GOOGLE=1;
    untested here): add() adds a version to a real secret, creating it; what
    only the double can do skips the test."""

    def __init__(self):
        from firstboot import secrets
        self._client = secrets._secret_manager_client()
        self.address = None

    def add(self, project: str, name: str, value: bytes) -> None:
        from google.api_core import exceptions
        try:
            self._client.create_secret(request={"parent": f"projects/{project}", "secret_id": name,
                                                "secret": {"replication": {"automatic": {}}}})
        except exceptions.AlreadyExists:
            pass
        self._client.add_secret_version(request={"parent": f"projects/{project}/secrets/{name}",
                                                 "payload": {"data": value}})

    def client_env(self) -> dict[str, str]:
        return {name: os.environ[name] for name in ("GOOGLE_APPLICATION_CREDENTIALS", "HOME") if name in os.environ}

    def _double_only(self, *args, **kwargs):
        pytest.skip("needs the Secret Manager double (faults, call records, checksums)")

    fail_next = recover = corrupt_checksum = _double_only
    calls = denied = list_calls = property(_double_only)

    def stop(self) -> None:
        pass
