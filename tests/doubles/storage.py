"""Stands in for Google Cloud Storage (storage.googleapis.com, JSON API) through gcp-storage-emulator; against the real service (untested here): RACKBOOT_REAL_GOOGLE=1, RACKBOOT_TEST_BUCKET=a bucket you own, Application Default Credentials (see tests/doubles/__init__.py).

The emulator runs in this process on an ephemeral loopback port; the agent's
real google-cloud-storage client finds it through STORAGE_EMULATOR_HOST, the
variable that client itself honours.

Object generations, as Cloud Storage keeps them: the emulator serves only
an object's live generation and ignores ?generation=. This double keeps the
generations an overwrite or delete makes noncurrent when the bucket has
Object Versioning enabled (as `berglas bootstrap` makes its bucket), and
answers ?generation=N on object metadata and media reads with that
generation, or 404 "No such object" when the bucket holds no such
generation (any other generation of an unversioned bucket, as in GCS).
"""

import copy
import http.server
import re
import threading
from functools import partial
from http import HTTPStatus

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.storage import Storage

GENERATION_READS = (objects.get, objects.download)     # the handlers ?generation= selects for


class VersionedStorage(Storage):
    """The emulator's storage, keeping noncurrent generations of versioned buckets."""

    def __init__(self):
        super().__init__(use_memory_fs=True)
        self.noncurrent: dict[tuple[str, str], dict[str, tuple[dict, bytes]]] = {}
        self._lock = threading.Lock()

    def _versioned(self, bucket_name: str) -> bool:
        return bool((self.buckets.get(bucket_name) or {}).get("versioning", {}).get("enabled"))

    def _keep_live_generation(self, bucket_name: str, file_name: str) -> None:
        live = self.objects.get(bucket_name, {}).get(file_name)
        if live is None or not self._versioned(bucket_name):
            return
        content = self.get_file(bucket_name, file_name, show_error=False)
        with self._lock:
            self.noncurrent.setdefault((bucket_name, file_name), {})[str(live["generation"])] = (
                copy.deepcopy(live), content)

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
        self._keep_live_generation(bucket_name, file_name)
        super().create_file(bucket_name, file_name, content, file_obj, file_id)

    def delete_file(self, bucket_name, file_name):
        self._keep_live_generation(bucket_name, file_name)
        super().delete_file(bucket_name, file_name)

    def generation(self, bucket_name: str, file_name: str, generation: str):
        """(object resource, content) of that generation; NotFound if the bucket has none."""
        live = self.objects.get(bucket_name, {}).get(file_name)
        if live is not None and str(live["generation"]) == generation:
            return live, self.get_file(bucket_name, file_name)
        with self._lock:
            kept = self.noncurrent.get((bucket_name, file_name), {}).get(generation)
        if kept is None:
            raise NotFound
        return kept


class _OneGeneration:
    """What the emulator's read handlers see for a ?generation= read: that
    generation as if it were the object."""

    def __init__(self, resource: dict, content: bytes):
        self._resource, self._content = resource, content

    def get_file_obj(self, bucket_name, file_name):
        return self._resource

    def get_file(self, bucket_name, file_name, show_error=True):
        return self._content


class _RequestHandler(emulator.RequestHandler):
    def do_GET(self):
        if not self._read_generation():
            super().do_GET()

    def do_POST(self):
        if not self._insert_bucket():
            super().do_POST()

    def _insert_bucket(self) -> bool:
        """buckets.insert, taking the new bucket's versioning as Cloud Storage
        does (the emulator takes its name only)."""
        request = emulator.Request(self, emulator.POST)
        if request.path not in (f"{emulator.settings.API_ENDPOINT}/b", "/b"):
            return False
        response = emulator.Response(self)
        buckets.insert(request, response, self.storage)
        bucket = self.storage.buckets.get((request.data or {}).get("name"))
        if response.status == HTTPStatus.OK and bucket and "versioning" in request.data:
            bucket["versioning"] = {"enabled": bool(request.data["versioning"].get("enabled"))}
            response.json(bucket)
        response.close()
        return True

    def _read_generation(self) -> bool:
        """Serve a GET that names a generation; False for any other request."""
        request = emulator.Request(self, emulator.GET)
        generation = (request.query.get("generation") or [None])[0]
        if generation is None or (request.query.get("softDeleted") or [""])[0].lower() in ("1", "true", "yes"):
            return False
        for regex, handlers in emulator.HANDLERS:      # the emulator's own routing
            match = re.fullmatch(regex, request.path)
            if match:
                break
        else:
            return False
        handler = handlers.get(emulator.GET)
        if handler not in GENERATION_READS:
            return False
        request.set_match(match)
        response = emulator.Response(self)
        bucket_name, object_id = request.params["bucket_name"], request.params["object_id"]
        try:
            resource, content = self.storage.generation(bucket_name, object_id, generation)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            response.json({"error": {"code": 404, "message": f"No such object: {bucket_name}/{object_id}",
                                     "errors": [{"domain": "global", "reason": "notFound",
                                                 "message": f"No such object: {bucket_name}/{object_id}"}]}})
        else:
            handler(request, response, _OneGeneration(resource, content))
        response.close()
        return True


class _ApiThread(emulator.APIThread):
    def run(self):
        self._httpd = http.server.HTTPServer((self._host, self._port), partial(_RequestHandler, self._storage))
        self.is_running.set()
        self._httpd.serve_forever()


class StorageDouble:
    def __init__(self):
        self.storage = VersionedStorage()
        self._api = _ApiThread("127.0.0.1", 0, self.storage, daemon=True)
        self.url = None

    def start(self) -> str:
        self._api.start()
        self._api.is_running.wait()
        self.url = f"http://127.0.0.1:{self._api._httpd.server_address[1]}"   # bound to port 0 for us
        return self.url

    def stop(self) -> None:
        self._api.join(timeout=1)

