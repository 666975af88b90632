"""A rack's cluster CA as stored: a tar (gzip'd or not) of the files k3s
takes from DATA/server/tls when they are there before its first start, and
what makes each of them usable.

k3s's list (docs, cli/certificate.md "Using Custom CA Certificates";
pkg/daemons/control/deps/deps.go CreateRuntimeCertFiles) is CA_PAIRS' .crt
and .key, and service.key, the service-account signing key, which has no
certificate. k3s makes a CA only when its .crt or .key is missing
(deps.go createSigningCertKey): a stored set that lacks one would make a
jumphost mix the rack's CAs with new ones of its own, so every file is
required, and nothing else is taken (no root or intermediate CA key, which
k3s's generate-custom-ca-certs.sh says to keep off cluster members).

Each .crt is a PEM bundle whose first certificate is the CA (the rest its
chain, as generate-custom-ca-certs.sh writes them, each certificate issued by
the next); its .key is that CA's private key. k3s signs every leaf
certificate with them (deps.go createClientCertKey), and Go refuses to sign
with a key that is not the parent certificate's, so a pair that does not
match stops k3s at its first start.

Nothing here puts a key's bytes into an error: messages name files only.
"""

import io
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath

from firstboot.errors import BadInput

CA_PAIRS = ("server-ca", "client-ca", "request-header-ca", "etcd/peer-ca", "etcd/server-ca")
SERVICE_KEY = "service.key"
REQUIRED = tuple(f"{pair}.{suffix}" for pair in CA_PAIRS for suffix in ("crt", "key")) + (SERVICE_KEY,)
DIRECTORIES = ("", "etcd")                # as members of the archive (tar -C tls .)
MAX_MEMBER_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClusterCa:
    """The stored CA files: name (as under server/tls) -> bytes."""
    files: tuple[tuple[str, bytes], ...] = field(repr=False)      # keys: never in a traceback

    def as_dict(self) -> dict[str, bytes]:
        return dict(self.files)


def is_key(name: str) -> bool:
    return name.endswith(".key")


def read(blob: bytes, where: str) -> ClusterCa:
    """The CA in blob (the stored value of reference where), checked; BadInput
    naming where and what is wrong."""
    files = _members(blob, where)
    if missing := [name for name in REQUIRED if name not in files]:
        raise BadInput(f"{where}: the stored cluster CA lacks {', '.join(missing)}",
                       hint="store all of k3s's CA files: " + ", ".join(REQUIRED) + " (./build.py make-ca makes them)")
    for pair in CA_PAIRS:
        _check_pair(files[f"{pair}.crt"], files[f"{pair}.key"], where, pair)
    _private_key(files[SERVICE_KEY], f"{where}: {SERVICE_KEY}")
    return ClusterCa(tuple(sorted(files.items())))


def _members(blob: bytes, where: str) -> dict[str, bytes]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise BadInput(f"{where}: the stored value is not a tar archive of k3s's CA files",
                       hint="store the archive ./build.py make-ca writes (a .tar.gz)") from None
    files = {}
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError, OSError):
            raise BadInput(f"{where}: the stored archive is damaged") from None
        for member in members:
            name = str(PurePosixPath(member.name))
            name = "" if name == "." else name.removeprefix("./")
            if member.isdir() and name in DIRECTORIES:
                continue
            if name not in REQUIRED:
                raise BadInput(f"{where}: the stored archive holds {member.name!r}, which is not one of k3s's CA "
                               "files", hint="it holds exactly: " + ", ".join(REQUIRED))
            if not member.isfile() or member.size > MAX_MEMBER_BYTES or name in files:
                raise BadInput(f"{where}: {name} in the stored archive is not a single regular file of at most "
                               f"{MAX_MEMBER_BYTES // 1024} KiB")
            files[name] = archive.extractfile(member).read()
    return files


def _certificates(pem: bytes, what: str) -> list:
    from cryptography import x509
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise BadInput(f"{what}.crt: not PEM certificates") from None


def _private_key(pem: bytes, what: str):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadInput(f"{what}: not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise BadInput(f"{what}: k3s takes RSA or ECDSA keys only")
    return key


def _check_pair(crt: bytes, key_pem: bytes, where: str, pair: str) -> None:
    what = f"{where}: {pair}"
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    certificates = _certificates(crt, what)
    for number, certificate in enumerate(certificates, start=1):
        try:
            ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise BadInput(f"{what}.crt: certificate {number} is not a CA (no basicConstraints CA:TRUE)")
        if certificate.not_valid_after_utc <= datetime.now(timezone.utc):
            raise BadInput(f"{what}.crt: certificate {number} expired on {certificate.not_valid_after_utc:%Y-%m-%d}",
                           hint="make a new CA (./build.py make-ca) before the rack's next jumphost starts")
    for number, (issued, issuer) in enumerate(zip(certificates, certificates[1:]), start=1):
        try:
            issued.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise BadInput(f"{what}.crt: certificate {number + 1} did not issue certificate {number}") from None
    key = _private_key(key_pem, f"{what}.key")
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificates[0].public_key().public_bytes(*spki):
        raise BadInput(f"{what}.key is not the key of {pair}.crt's certificate",
                       hint="store the CA's certificate and its own key")
