"""Secret references as berglas writes them, plus file:// for labs without
Google Cloud.

    berglas://BUCKET/OBJECT[#GENERATION]   Cloud Storage + Cloud KMS envelope
    sm://PROJECT/NAME[#VERSION]            Secret Manager (version: latest)
    file:///ABSOLUTE/PATH                  a file on the machine

Parsing is strict and happens when a profile is loaded, so a typo fails the
build, not the first boot of a rack.
"""

import re
from dataclasses import dataclass

# Cloud Storage bucket names: 3-63 of [a-z0-9-_.], starting and ending alphanumeric.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
# Project IDs (6-30 chars) or project numbers.
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20}")
# Secret Manager secret IDs; berglas rejects '/' in them.
_SM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SM_VERSION = re.compile(r"latest|[1-9][0-9]*")
_GENERATION = re.compile(r"[1-9][0-9]*")
# file:// paths: absolute, plain components (the agent opens exactly this path).
_FILE_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")


class SecretRefError(ValueError):
    pass


@dataclass(frozen=True)
class SecretRef:
    scheme: str          # "berglas", "sm" or "file"
    location: str        # bucket, project, or "" for file
    name: str            # object, secret name, or absolute path
    version: str | None  # berglas generation, sm version; None = latest
    key: str | None = None  # value is a Kubernetes Secret YAML: take .data[key]

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.name}"
        suffix = f"#{self.version}" if self.version else ""
        return f"{self.scheme}://{self.location}/{self.name}{suffix}"


def parse(text: str, key: str | None = None) -> SecretRef:
    if any(char.isspace() or not char.isprintable() for char in text):
        raise SecretRefError(f"{text!r}: a secret reference holds no spaces or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise SecretRefError(
            f"{text!r} is not a secret reference (berglas://BUCKET/OBJECT, "
            "sm://PROJECT/NAME or file:///PATH)")
    if scheme == "file":
        if not rest.startswith("/") or "#" in rest:
            raise SecretRefError(f"{text!r}: file:// needs an absolute path, as in file:///etc/rackboot/token")
        if not _FILE_PATH.fullmatch(rest) or {".", ".."} & set(rest.split("/")):
            raise SecretRefError(f"{text!r}: file:// path components are letters, digits, '.', '_' and '-' "
                                 "(no '.' or '..' components)")
        return SecretRef("file", "", rest, None, key)
    if scheme not in ("berglas", "sm"):
        raise SecretRefError(f"{text!r}: unknown scheme {scheme!r} (berglas, sm or file)")
    path, _, version = rest.partition("#")
    location, slash, name = path.partition("/")
    if scheme == "berglas":
        if not _BUCKET.fullmatch(location):
            raise SecretRefError(f"{text!r}: {location!r} is not a Cloud Storage bucket name")
        if not slash or not name or name.endswith("/"):
            raise SecretRefError(f"{text!r}: the object name is missing (berglas://BUCKET/OBJECT)")
        if version and not _GENERATION.fullmatch(version):
            raise SecretRefError(f"{text!r}: generation {version!r} is not a number")
    else:
        if not _PROJECT.fullmatch(location):
            raise SecretRefError(f"{text!r}: {location!r} is not a Google Cloud project ID")
        if not _SM_NAME.fullmatch(name):
            raise SecretRefError(
                f"{text!r}: {name!r} is not a Secret Manager secret name (letters, digits, - and _; no '/')")
        if version and not _SM_VERSION.fullmatch(version):
            raise SecretRefError(f"{text!r}: version {version!r} is not 'latest' or a number")
    return SecretRef(scheme, location, name, version or None, key)
