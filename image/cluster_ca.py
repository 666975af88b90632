"""build.py make-ca: a rack's cluster CA, made as k3s's
contrib/util/generate-custom-ca-certs.sh makes one: a root CA (RSA 4096,
20 years) and an intermediate (RSA 4096, about 10 years) signing k3s's five
leaf CAs (server, client, request-header, etcd server, etcd peer: EC P-256,
about 10 years; each NAME-ca.crt holds the leaf, the intermediate and the
root), and service.key, the service-account signing key (RSA 2048).

k3s's join tokens then carry the root's hash (k3s's hashCA hashes a
bundle's root), so new leaf CAs under the same root (`k3s certificate
rotate-ca`) keep the Pis' tokens valid.

Written to DIR/RACK/:
    cluster-ca.tar.gz                what k3s.ca names once stored (the files k3s
                                     needs, as under server/tls; firstboot/k3s_ca_files.py)
    root-ca.pem, root-ca.key         keep these offline: they make new leaf CAs
    intermediate-ca.pem, .key        later; they never go onto a jumphost
"""

import datetime
import io
import tarfile
from dataclasses import dataclass, field

from firstboot.k3s_ca_files import CA_PAIRS, SERVICE_KEY

DAY = datetime.timedelta(days=1)
ARCHIVE = "cluster-ca.tar.gz"


@dataclass(frozen=True)
class Authority:
    archive: bytes = field(repr=False)                        # cluster-ca.tar.gz (keys: never in a traceback)
    offline: tuple[tuple[str, bytes], ...] = field(repr=False)   # root and intermediate: name -> PEM


def _ca_certificate(subject: str, key, issuer_cert, issuer_key, days: int, now):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer = issuer_cert.subject if issuer_cert is not None else name
    authority = (issuer_cert.public_key() if issuer_cert is not None else key.public_key())
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - DAY)
               .not_valid_after(now + days * DAY)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                            content_commitment=False, data_encipherment=False, key_agreement=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True))
    return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())


def _pem(certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    return certificate.public_bytes(Encoding.PEM)


def _key_pem(key) -> bytes:
    """As openssl genrsa -traditional and ecparam -genkey write them (PKCS#1, SEC 1)."""
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make(rack: str, now: datetime.datetime | None = None, rsa_bits: int = 4096) -> Authority:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp = int(now.timestamp())
    root_key = rsa.generate_private_key(65537, rsa_bits)
    root = _ca_certificate(f"k3s-root-ca@{stamp} {rack}", root_key, None, None, 7300, now)
    middle_key = rsa.generate_private_key(65537, rsa_bits)
    middle = _ca_certificate(f"k3s-intermediate-ca@{stamp} {rack}", middle_key, root, root_key, 3700, now)
    files = {}
    for pair in CA_PAIRS:
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"k3s-{pair.replace('/', '-')}@{stamp}"
        files[f"{pair}.crt"] = _pem(_ca_certificate(name, key, middle, middle_key, 3700, now)) + _pem(middle) + _pem(root)
        files[f"{pair}.key"] = _key_pem(key)
    files[SERVICE_KEY] = _key_pem(rsa.generate_private_key(65537, 2048))
    offline = (("root-ca.pem", _pem(root)), ("root-ca.key", _key_pem(root_key)),
               ("intermediate-ca.pem", _pem(middle)), ("intermediate-ca.key", _key_pem(middle_key)))
    return Authority(archive(files, stamp), offline)


def archive(files: dict[str, bytes], mtime: int = 0) -> bytes:
    """files (name as under server/tls -> bytes) as a gzip'd tar, sorted;
    keys 0600, certificates 0644, owned by root."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            member = tarfile.TarInfo(name)
            member.size, member.mtime = len(files[name]), mtime
            member.mode = 0o600 if name.endswith(".key") else 0o644
            tar.addfile(member, io.BytesIO(files[name]))
    return out.getvalue()
