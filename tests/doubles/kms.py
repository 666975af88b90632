"""Stands in for Google Cloud KMS (cloudkms.googleapis.com, gRPC); against the real service (untested here): RACKBOOT_REAL_GOOGLE=1 RACKBOOT_TEST_KMS_KEY=projects/P/locations/L/keyRings/R/cryptoKeys/K with Application Default Credentials (tests/doubles/__init__.py).

A gRPC server speaking google.cloud.kms.v1.KeyManagementService's Encrypt and
Decrypt with the client library's own message types. Each key is a real
AES-256-GCM key, and additional authenticated data is bound as KMS binds it:
a ciphertext decrypts only with the same key name and the same AAD.
"""

import os
import threading
from concurrent import futures

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud.kms_v1 import types

SERVICE = "google.cloud.kms.v1.KeyManagementService"


class KmsDouble:
    def __init__(self):
        self.keys: dict[str, bytes] = {}      # projects/P/locations/L/keyRings/R/cryptoKeys/K -> key
        self.decrypts: list[str] = []
        self._lock = threading.Lock()
        self._server = None
        self.address = None

    def create_key(self, name: str) -> str:
        self.keys[name] = AESGCM.generate_key(bit_length=256)
        return name

    def _key(self, name: str, context) -> bytes:
        key = self.keys.get(name.split("/cryptoKeyVersions/")[0])
        if key is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"CryptoKey {name} not found.")
        return key

    def _encrypt(self, request: types.EncryptRequest, context) -> types.EncryptResponse:
        nonce = os.urandom(12)
        sealed = AESGCM(self._key(request.name, context)).encrypt(
            nonce, request.plaintext, request.additional_authenticated_data or None)
        return types.EncryptResponse(name=f"{request.name}/cryptoKeyVersions/1", ciphertext=nonce + sealed)

    def _decrypt(self, request: types.DecryptRequest, context) -> types.DecryptResponse:
        with self._lock:
            self.decrypts.append(request.name)
        key = self._key(request.name, context)
        try:
            plaintext = AESGCM(key).decrypt(request.ciphertext[:12], request.ciphertext[12:],
                                            request.additional_authenticated_data or None)
        except (InvalidTag, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        return types.DecryptResponse(plaintext=plaintext)

    def start(self) -> str:
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Encrypt": grpc.unary_unary_rpc_method_handler(
                self._encrypt, request_deserializer=types.EncryptRequest.deserialize,
                response_serializer=types.EncryptResponse.serialize),
            "Decrypt": grpc.unary_unary_rpc_method_handler(
                self._decrypt, request_deserializer=types.DecryptRequest.deserialize,
                response_serializer=types.DecryptResponse.serialize),
        })
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()
        return self.address

    def stop(self) -> None:
        if self._server:
            self._server.stop(grace=None)
