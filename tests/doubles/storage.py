"""Stands in for Google Cloud Storage (storage.googleapis.com, JSON API) through gcp-storage-emulator; to test against the real service, unset STORAGE_EMULATOR_HOST and RACKBOOT_KMS_EMULATOR_HOST, point the tests at a bucket and KMS key you own, and provide Application Default Credentials.

The emulator runs in this process on an ephemeral loopback port; the agent's
real google-cloud-storage client finds it through STORAGE_EMULATOR_HOST, the
variable that client itself honours.
"""

from gcp_storage_emulator.server import create_server


class StorageDouble:
    def __init__(self):
        self._server = create_server("127.0.0.1", 0, in_memory=True)
        self.url = None

    def start(self) -> str:
        self._server.start()
        port = self._server._api._httpd.server_address[1]   # the emulator binds port 0 for us
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()
