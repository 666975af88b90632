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

Listing (objects.list), as Cloud Storage pages it: names in lexicographic
order, items and prefixes together at most maxResults per page, and never
more than 1000 (the service's cap; page_cap here, which a test may lower, as
the service may send fewer than asked), nextPageToken while more remain (an
opaque token: one the server did not give is 400), and items, prefixes and
nextPageToken left out of the answer when empty. The emulator sends
everything in one page.
"""

import base64
import binascii
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
MAX_RESULTS = 1000                                     # Cloud Storage's most per page
PAGE_TOKEN_MARK = "Cg"                                 # how the double's page tokens start


class VersionedStorage(Storage):
    """The emulator's storage, keeping noncurrent generations of versioned buckets."""

    def __init__(self):
        super().__init__(use_memory_fs=True)
        self.noncurrent: dict[tuple[str, str], dict[str, tuple[dict, bytes]]] = {}
        self.page_cap = MAX_RESULTS
        self.list_requests: list[dict] = []          # each objects.list's query, in order
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
        if not self._list_page() and not self._read_generation():
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

    def _route(self, request):
        """(handler, match) as the emulator routes a GET, or (None, None)."""
        for regex, handlers in emulator.HANDLERS:
            match = re.fullmatch(regex, request.path)
            if match:
                return handlers.get(emulator.GET), match
        return None, None

    def _list_page(self) -> bool:
        """objects.list, one page of it; False for any other request."""
        request = emulator.Request(self, emulator.GET)
        handler, match = self._route(request)
        if handler is not objects.ls:
            return False
        request.set_match(match)
        query = {key: values[0] for key, values in request.query.items()}
        self.storage.list_requests.append(query)
        response = emulator.Response(self)
        try:
            names, items, prefixes = self._listed(request.params["bucket_name"], query)
            start = _page_start(query.get("pageToken"), names)
            wanted = int(query.get("maxResults", MAX_RESULTS))
            if wanted < 1:
                raise ValueError(wanted)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            response.json(_error(404, "notFound", "The specified bucket does not exist."))
        except ValueError:
            response.status = HTTPStatus.BAD_REQUEST
            response.json(_error(400, "invalid", "Invalid argument."))
        else:
            size = min(wanted, self.storage.page_cap, MAX_RESULTS)
            page = names[start:start + size]
            body = {"kind": "storage#objects"}
            if start + size < len(names):
                body["nextPageToken"] = PAGE_TOKEN_MARK + base64.urlsafe_b64encode(page[-1].encode()).decode()
            if [p for p in page if p in prefixes]:
                body["prefixes"] = [p for p in page if p in prefixes]
            if [n for n in page if n in items]:
                body["items"] = [items[n] for n in page if n in items]
            response.json(body)
        response.close()
        return True

    def _listed(self, bucket_name: str, query: dict) -> tuple[list[str], dict, set]:
        """Every name of the listing in order, objects by name, and the prefixes (with a delimiter)."""
        found, prefixes = self.storage.get_file_list(bucket_name, query.get("prefix"), query.get("delimiter"),
                                                     query.get("matchGlob"))
        items = {obj["name"]: obj for obj in found}
        return sorted({*items, *prefixes}), items, set(prefixes)

    def _read_generation(self) -> bool:
        """Serve a GET that names a generation; False for any other request."""
        request = emulator.Request(self, emulator.GET)
        generation = (request.query.get("generation") or [None])[0]
        if generation is None or (request.query.get("softDeleted") or [""])[0].lower() in ("1", "true", "yes"):
            return False
        handler, match = self._route(request)      # the emulator's own routing
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


def _page_start(token: str | None, names: list[str]) -> int:
    """Where a page starts: after the name the token names; ValueError for a token not the server's."""
    if not token:
        return 0
    if not token.startswith(PAGE_TOKEN_MARK):
        raise ValueError(token)
    try:
        after = base64.urlsafe_b64decode(token.removeprefix(PAGE_TOKEN_MARK).encode()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(token) from None
    return sum(1 for name in names if name <= after)


def _error(code: int, reason: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "errors": [{"domain": "global", "reason": reason,
                                                                     "message": message}]}}


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

