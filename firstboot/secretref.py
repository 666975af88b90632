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


# The part of a Kubernetes Secret's name a stored object's name may give (a DNS subdomain's characters).
_SM_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,254}")
_OBJECT_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/")
_DIRECTORY = re.compile(r"(/[A-Za-z0-9._-]+)*/")


@dataclass(frozen=True)
class SecretPrefix:
    """Every secret under a prefix, as `berglas list BUCKET --prefix=PREFIX` lists them.

    berglas://BUCKET/FOLDER/   the berglas objects whose names start with FOLDER/
    sm://PROJECT/PREFIX        the Secret Manager secrets whose IDs start with PREFIX
    file:///DIRECTORY/         the regular files directly in DIRECTORY
    """
    scheme: str
    location: str        # bucket, project, or "" for file
    prefix: str          # FOLDER/, PREFIX, or /DIRECTORY/

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.location}/{self.prefix}"

    def ref(self, stored_name: str, version: str | None = None) -> SecretRef:
        """The reference of the secret stored under stored_name (what follows the prefix)."""
        return SecretRef(self.scheme, self.location, self.prefix + stored_name, version)


def parse_prefix(text: str) -> SecretPrefix:
    if any(char.isspace() or not char.isprintable() for char in text) or "#" in text:
        raise SecretRefError(f"{text!r}: a secret prefix holds no spaces, control characters or '#'")
    scheme, sep, rest = text.partition("://")
    if scheme == "file" and sep:
        if not _DIRECTORY.fullmatch(rest) or {".", ".."} & set(rest.split("/")):
            raise SecretRefError(f"{text!r}: a file:// prefix is an absolute directory ending in '/', "
                                 "as in file:///etc/rackboot/secrets/")
        return SecretPrefix("file", "", rest)
    location, _, prefix = rest.partition("/")
    if scheme == "berglas" and sep:
        if not _BUCKET.fullmatch(location):
            raise SecretRefError(f"{text!r}: {location!r} is not a Cloud Storage bucket name")
        if not _OBJECT_PREFIX.fullmatch(prefix):
            raise SecretRefError(f"{text!r}: a berglas prefix is a folder ending in '/', "
                                 "as in berglas://skia-secrets/skolo-rack4/")
        return SecretPrefix("berglas", location, prefix)
    if scheme == "sm" and sep:
        if not _PROJECT.fullmatch(location):
            raise SecretRefError(f"{text!r}: {location!r} is not a Google Cloud project ID")
        if not _SM_PREFIX.fullmatch(prefix):
            raise SecretRefError(f"{text!r}: {prefix!r} is not the start of a Secret Manager secret name "
                                 "(letters, digits, - and _; no '/')")
        return SecretPrefix("sm", location, prefix)
    raise SecretRefError(f"{text!r} is not a secret prefix (berglas://BUCKET/FOLDER/, sm://PROJECT/PREFIX "
                         "or file:///DIRECTORY/)")
