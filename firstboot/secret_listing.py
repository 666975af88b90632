"""List the secrets under a prefix (secretref.SecretPrefix), as `berglas list`
lists them (pkg/berglas/list.go), one backend per scheme:

    berglas://  Cloud Storage objects.list with the prefix (every page), keeping the
                objects whose metadata has berglas-secret "1", as berglas does; each
                is read at the generation listed, so a value and the listing agree
    sm://       Secret Manager ListSecrets of the project (every page), keeping the
                secrets whose ID starts with the prefix, as berglas does (the API's
                names carry the project's number, so only the ID is compared)
    file://     the regular files directly in the directory

Each listed secret has a stored name: what follows the prefix. Only names go
into logs and errors; nothing here reads a value.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from firstboot import secrets
from firstboot.secretref import SecretPrefix, SecretRef

PAGE_SIZE = 1000        # Cloud Storage's most per page; Secret Manager takes up to 25000
BERGLAS_SECRET_KEY = "berglas-secret"     # berglas's MetadataIDKey; its value is "1"


@dataclass(frozen=True)
class Listed:
    stored_name: str         # the name after the prefix
    ref: SecretRef


@dataclass(frozen=True)
class Listing:
    secrets: tuple[Listed, ...]      # sorted by stored name
    skipped: tuple[str, ...]         # under the prefix but not berglas secrets (berglas list skips them too)


def _berglas(prefix: SecretPrefix) -> Listing:
    import requests

    hint = ("check the prefix, and that the machine's service account may list the bucket "
            "(roles/storage.objectViewer)")
    listed, skipped = [], []
    with secrets._google_errors(prefix, hint, transient=(requests.exceptions.ConnectionError,
                                                         requests.exceptions.Timeout)):
        # retry=None: the retries are ours (secrets.with_retries), the whole listing again.
        blobs = secrets._storage_client().list_blobs(prefix.location, prefix=prefix.prefix, page_size=PAGE_SIZE,
                                                      retry=None, timeout=30)
        for blob in blobs:
            stored_name = blob.name[len(prefix.prefix):]
            if (blob.metadata or {}).get(BERGLAS_SECRET_KEY) != "1":
                skipped.append(stored_name)
                continue
            listed.append(Listed(stored_name, prefix.ref(stored_name, str(blob.generation))))
    return Listing(tuple(sorted(listed, key=lambda s: s.stored_name)), tuple(sorted(skipped)))


def _secret_manager(prefix: SecretPrefix) -> Listing:
    hint = ("check the prefix, and that the machine's service account may list the project's secrets "
            "(roles/secretmanager.viewer)")
    listed = []
    with secrets._google_errors(prefix, hint):
        pager = secrets._secret_manager_client().list_secrets(
            request={"parent": f"projects/{prefix.location}", "page_size": PAGE_SIZE}, retry=None, timeout=30)
        for secret in pager:
            secret_id = secret.name.rpartition("/")[2]
            if secret_id.startswith(prefix.prefix):
                stored_name = secret_id[len(prefix.prefix):]
                listed.append(Listed(stored_name, prefix.ref(stored_name)))
    return Listing(tuple(sorted(listed, key=lambda s: s.stored_name)), ())


def _file(prefix: SecretPrefix) -> Listing:
    try:
        entries = sorted(os.scandir(prefix.prefix), key=lambda entry: entry.name)
    except FileNotFoundError:
        raise secrets.SecretError(f"{prefix}: no such directory") from None
    except NotADirectoryError:
        raise secrets.SecretError(f"{prefix}: not a directory") from None
    except PermissionError:
        raise secrets.SecretError(f"{prefix}: permission denied",
                                  hint="the agent runs as root; check the directory's mode") from None
    listed = [Listed(entry.name, prefix.ref(entry.name)) for entry in entries if entry.is_file()]
    skipped = [entry.name for entry in entries if not entry.is_file()]
    return Listing(tuple(listed), tuple(skipped))


LISTERS: dict[str, Callable[[SecretPrefix], Listing]] = {
    "berglas": _berglas,
    "sm": _secret_manager,
    "file": _file,
}


def list_prefix(prefix: SecretPrefix, delays=secrets.RETRY_DELAYS, sleep=time.sleep) -> Listing:
    """The secrets under prefix. Retries transient failures, then gives up naming prefix."""
    return secrets.with_retries(prefix, lambda: LISTERS[prefix.scheme](prefix), delays, sleep)
