"""A rack's cluster CA from the secret store (profile key k3s.ca), placed
before k3s's first start (firstboot/k3s_ca.py, k3s_ca_files.py), made by
`build.py make-ca` (image/cluster_ca.py) as k3s's
generate-custom-ca-certs.sh makes one.

Pure: the stored archive is read through the real Secret Manager client from
its double; what is placed, with which modes; every broken secret refused
naming the reference and the file, nothing placed, no key bytes in the
message; a server that has another CA is never given the stored one; check
refuses a bad reference at its path; the k3s stand-in takes placed CAs and
stops, as k3s does, on a pair that does not match.
Machine: a jumphost swapped for a fresh one flashed from the same image
comes up with the rack's CA: the same server CA, the same CA hash in k3s's
tokens (a Pi's token pinned to the first still validates against the
second); without k3s.ca, the two differ."""

import datetime
import hashlib
import io
import ssl
import stat
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from firstboot import k3s_ca, k3s_ca_files, secretref
from firstboot.errors import BadInput, ProfileError, RackbootError
from firstboot.layout import Layout
from firstboot.profile import load_profiles
from image import cli, cluster_ca
from tests.doubles import k3s_standin
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.rack import Rack
from tests import test_berglas
from tests.test_berglas import BUCKET, berglas_create

REPO = Path(__file__).resolve().parent.parent
PROJECT, NAME = "rackboot-loop", "k3s-cluster-ca"
REF = secretref.parse(f"sm://{PROJECT}/{NAME}")
google, cloud = test_berglas.google, test_berglas.cloud     # the same fixtures: the storage and KMS doubles


@pytest.fixture(scope="module")
def authority():
    return cluster_ca.make("loop", rsa_bits=2048)


@pytest.fixture(scope="module")
def other_authority():
    return cluster_ca.make("loop", rsa_bits=2048)


@pytest.fixture
def sm(monkeypatch):
    double = SecretManagerDouble()
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", double.start())
    yield double
    double.stop()


def files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def key_lines(files: dict[str, bytes]) -> list[str]:
    """A line from the middle of every key: none may be printed anywhere."""
    return [content.decode().splitlines()[2] for name, content in files.items() if name.endswith(".key")]


def root_hash(authority) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(dict(authority.offline)["root-ca.pem"].decode())).hexdigest()


def install(tmp_path, access=None):
    layout = Layout(tmp_path / "root")
    return k3s_ca.install_from(REF, layout.k3s_tls, layout.datastore, access), layout


# ------------------------------------------------------------------ make-ca


def test_make_ca_writes_the_files_k3s_needs_with_their_chain(authority):
    files = files_of(authority.archive)
    assert sorted(files) == sorted(k3s_ca_files.REQUIRED)
    k3s_ca_files.read(authority.archive, "made")          # every check passes
    root, middle = (dict(authority.offline)[f"{n}-ca.pem"] for n in ("root", "intermediate"))
    for pair in k3s_ca_files.CA_PAIRS:
        assert files[f"{pair}.crt"].endswith(middle + root)
        assert files[f"{pair}.crt"].count(b"BEGIN CERTIFICATE") == 3
    # k3s's hashCA of a bundle is its root's: the same for every leaf CA made under it.
    assert k3s_standin.ca_hash(files["server-ca.crt"]) == root_hash(authority)
    with tarfile.open(fileobj=io.BytesIO(authority.archive)) as tar:
        assert {m.name: m.mode for m in tar.getmembers()} == {
            name: 0o600 if name.endswith(".key") else 0o644 for name in files}


def test_make_ca_verb_writes_the_archive_and_the_offline_authority_and_never_replaces(tmp_path, capsys):
    profile = REPO / "tests/profiles/loopback"
    assert cli.main(["make-ca", str(profile), "-o", str(tmp_path / "out")]) == 0
    made = tmp_path / "out/loop"
    assert sorted(p.name for p in made.iterdir()) == [
        "cluster-ca.tar.gz", "intermediate-ca.key", "intermediate-ca.pem", "root-ca.key", "root-ca.pem"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in made.iterdir()} == {0o600}
    k3s_ca_files.read((made / "cluster-ca.tar.gz").read_bytes(), "made")
    before = (made / "root-ca.key").read_bytes()
    assert cli.main(["make-ca", str(profile), "-o", str(tmp_path / "out")]) == 2
    assert "never replaces a CA" in capsys.readouterr().err
    assert (made / "root-ca.key").read_bytes() == before


# ------------------------------------------------------------- placing it


def test_the_stored_ca_is_placed_through_secret_manager_with_k3s_modes(tmp_path, sm, authority, capsys):
    sm.add(PROJECT, NAME, authority.archive)
    result, layout = install(tmp_path)
    assert result == {"reference": str(REF), "placed": list(k3s_ca_files.REQUIRED)}
    files = files_of(authority.archive)
    for name, content in files.items():
        path = layout.k3s_tls / name
        assert path.read_bytes() == content
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if name.endswith(".key") else 0o644)
    assert stat.S_IMODE(layout.k3s_tls.stat().st_mode) == 0o700
    assert sorted(p.name for p in layout.k3s_tls.parent.iterdir()) == ["tls"]     # no staging left
    # Every later run: nothing to do.
    assert install(tmp_path)[0] == {"reference": str(REF), "placed": []}
    printed = capsys.readouterr()
    assert not any(line in printed.out + printed.err for line in key_lines(files))


def test_the_stored_ca_is_placed_through_berglas(tmp_path, cloud, authority):
    """Stored the berglas way (Cloud Storage object, KMS-wrapped data key), read by the real clients."""
    bucket, kms = cloud
    berglas_create(bucket, "skolo-rack4/k3s-cluster-ca", authority.archive)
    ref = secretref.parse(f"berglas://{BUCKET}/skolo-rack4/k3s-cluster-ca")
    layout = Layout(tmp_path / "root")
    assert k3s_ca.install_from(ref, layout.k3s_tls, layout.datastore)["placed"] == list(k3s_ca_files.REQUIRED)
    assert (layout.k3s_tls / "service.key").read_bytes() == files_of(authority.archive)["service.key"]
    assert kms.decrypts


def test_a_run_cut_short_is_completed_before_k3s_starts(tmp_path, authority):
    layout = Layout(tmp_path / "root")
    files = files_of(authority.archive)
    (layout.k3s_tls / "etcd").mkdir(parents=True)
    for name in ("server-ca.crt", "server-ca.key", "etcd/peer-ca.crt"):
        (layout.k3s_tls / name).write_bytes(files[name])
    result = k3s_ca.install_from(REF, layout.k3s_tls, layout.datastore, lambda ref: authority.archive)
    assert sorted(result["placed"]) == sorted(set(k3s_ca_files.REQUIRED) - {"server-ca.crt", "server-ca.key",
                                                                           "etcd/peer-ca.crt"})
    assert all((layout.k3s_tls / name).read_bytes() == content for name, content in files.items())


def test_a_server_with_another_ca_is_never_given_the_stored_one(tmp_path, authority, other_authority):
    layout = Layout(tmp_path / "root")
    k3s_ca.install_from(REF, layout.k3s_tls, layout.datastore, lambda ref: other_authority.archive)
    before = {p: p.read_bytes() for p in layout.k3s_tls.rglob("*") if p.is_file()}
    with pytest.raises(BadInput) as refused:
        k3s_ca.install_from(REF, layout.k3s_tls, layout.datastore, lambda ref: authority.archive)
    message = str(refused.value)
    assert message.startswith(f"{REF}: this k3s server already has another cluster CA")
    assert "server-ca.crt" in message and "not replacing it" in message
    assert "rotate-ca" in refused.value.hint
    assert {p: p.read_bytes() for p in layout.k3s_tls.rglob("*") if p.is_file()} == before


def test_a_started_server_missing_ca_files_gets_none(tmp_path, authority):
    layout = Layout(tmp_path / "root")
    layout.datastore.mkdir(parents=True)
    with pytest.raises(BadInput, match=r"k3s's datastore .* exists but .* lacks server-ca.crt"):
        k3s_ca.install_from(REF, layout.k3s_tls, layout.datastore, lambda ref: authority.archive)
    assert not layout.k3s_tls.exists()


def _without(files: dict, name: str) -> dict:
    return {n: c for n, c in files.items() if n != name}


BROKEN = {
    "missing-file": (lambda f, o: _without(f, "service.key"), "the stored cluster CA lacks service.key"),
    "missing-etcd-key": (lambda f, o: _without(f, "etcd/peer-ca.key"), "lacks etcd/peer-ca.key"),
    "mismatched-key": (lambda f, o: {**f, "server-ca.key": o["server-ca.key"]},
                       "server-ca.key is not the key of server-ca.crt's certificate"),
    "not-pem": (lambda f, o: {**f, "client-ca.crt": b"not a certificate\n"}, "client-ca.crt: not PEM certificates"),
    "key-not-pem": (lambda f, o: {**f, "request-header-ca.key": b"garbage\n"},
                    "request-header-ca.key: not an unencrypted PEM private key"),
    "wrong-chain": (lambda f, o: {**f, "server-ca.crt": f["server-ca.crt"].split(b"-----END CERTIFICATE-----\n")[0]
                                  + b"-----END CERTIFICATE-----\n" + o["client-ca.crt"].split(
                                      b"-----END CERTIFICATE-----\n", 1)[1]},
                    "server-ca.crt: certificate 2 did not issue certificate 1"),
    "extra-file": (lambda f, o: {**f, "root-ca.key": o["service.key"]}, "holds 'root-ca.key', which is not one"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_ca_secret_is_refused_naming_reference_and_file_and_nothing_is_placed(
        tmp_path, sm, authority, other_authority, case):
    change, expected = BROKEN[case]
    files = files_of(authority.archive)
    sm.add(PROJECT, NAME, cluster_ca.archive(change(files, files_of(other_authority.archive))))
    with pytest.raises(BadInput) as refused:
        install(tmp_path)
    message = str(refused.value) + str(refused.value.hint)
    assert message.startswith(f"{REF}: ") and expected in message
    assert not any(line in message for line in key_lines(files) + key_lines(files_of(other_authority.archive)))
    assert not (tmp_path / "root").exists()


def test_a_certificate_that_is_no_ca_is_refused(authority):
    """A self-signed certificate of the CA's own key, without basicConstraints CA:TRUE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    files = files_of(authority.archive)
    key = serialization.load_pem_private_key(files["server-ca.key"], None)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "not a ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    files["server-ca.crt"] = leaf.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(BadInput, match=r"server-ca.crt: certificate 1 is not a CA"):
        k3s_ca_files.read(cluster_ca.archive(files), str(REF))


@pytest.mark.parametrize("value, expected", [
    (b"", "not a tar archive"), (b"K10abc::server:secret\n", "not a tar archive")])
def test_a_value_that_is_no_archive_is_refused(tmp_path, value, expected):
    with pytest.raises(BadInput, match=expected):
        install(tmp_path, access=lambda ref: value)
    assert not (tmp_path / "root").exists()


def test_an_absent_secret_is_refused_naming_the_reference_and_nothing_is_placed(tmp_path, sm):
    with pytest.raises(RackbootError) as refused:
        install(tmp_path)
    assert str(REF) in str(refused.value)
    assert not (tmp_path / "root").exists()


def test_without_k3s_ca_nothing_is_fetched_or_placed(tmp_path):
    layout = Layout(tmp_path / "root")
    assert k3s_ca.install(layout, "loop") is None        # no rack model here: the rack has no CA of its own
    assert not layout.k3s_tls.exists()


# ------------------------------------------------------------------ check


@pytest.mark.parametrize("reference, expected", [
    ("sm://Bad Project/x", "holds no spaces"), ("gs://bucket/ca", "unknown scheme"),
    ("berglas://skia-secrets/", "the object name is missing")])
def test_check_refuses_a_bad_ca_reference_at_its_path(tmp_path, reference, expected):
    profile = yaml.safe_load((REPO / "tests/profiles/loopback/loop.yaml").read_text())
    profile["k3s"]["ca"] = reference
    profile.pop("manifests")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(ProfileError) as refused:
        load_profiles([tmp_path / "loop.yaml"])
    [problem] = refused.value.problems
    assert "k3s.ca" in problem and expected in problem and "loop.yaml" in problem


def test_a_profile_with_k3s_ca_carries_it_into_the_rack_model(tmp_path):
    profile = yaml.safe_load((REPO / "tests/profiles/loopback/loop.yaml").read_text())
    profile["k3s"]["ca"] = {"ref": "berglas://skia-secrets/skolo-rack4/k3s-ca", "key": "ca.tar.gz"}
    profile.pop("manifests")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(profile))
    [loaded] = load_profiles([tmp_path / "loop.yaml"])
    assert loaded.k3s.ca == secretref.parse("berglas://skia-secrets/skolo-rack4/k3s-ca", "ca.tar.gz")
    from firstboot.profile import from_json, to_json
    assert from_json(to_json(loaded)).k3s.ca == loaded.k3s.ca


# ------------------------------------------------- the stand-in, as k3s


def test_the_standin_takes_placed_cas_and_makes_only_what_is_missing(tmp_path, authority):
    tls = tmp_path / "tls"
    k3s_ca.install_from(REF, tls, tmp_path / "db", lambda ref: authority.archive)
    placed = {p.relative_to(tls): p.read_bytes() for p in tls.rglob("*") if p.is_file()}
    for name in k3s_standin.CA_NAMES:
        k3s_standin.make_ca(tls, name)
    k3s_standin.make_service_key(tls)
    k3s_standin.check_cas(tls)
    assert {p.relative_to(tls): p.read_bytes() for p in tls.rglob("*") if p.is_file()} == placed
    (tls / "client-ca.crt").unlink()        # k3s: a missing certificate is made again with the key there
    k3s_standin.make_ca(tls, "client-ca")
    assert (tls / "client-ca.key").read_bytes() == placed[Path("client-ca.key")]
    assert (tls / "client-ca.crt").read_bytes() != placed[Path("client-ca.crt")]
    k3s_standin.check_cas(tls)


def test_the_standin_stops_as_k3s_does_on_a_key_that_is_not_its_certificates(tmp_path, authority, other_authority,
                                                                              capsys):
    tls = tmp_path / "tls"
    k3s_ca.install_from(REF, tls, tmp_path / "db", lambda ref: authority.archive)
    (tls / "etcd/server-ca.key").write_bytes(files_of(other_authority.archive)["etcd/server-ca.key"])
    with pytest.raises(SystemExit) as stopped:
        k3s_standin.check_cas(tls)
    assert stopped.value.code == 1
    assert "x509: provided PrivateKey doesn't match parent's PublicKey" in capsys.readouterr().err


def test_the_standin_hashes_a_single_ca_certificate_as_its_bytes(tmp_path):
    k3s_standin.make_ca(tmp_path, "server-ca")
    crt = (tmp_path / "server-ca.crt").read_bytes()
    assert k3s_standin.ca_hash(crt) == hashlib.sha256(crt).hexdigest()


# ------------------------------------------------------- swapping a jumphost


def _jumphost_facts(rack) -> dict:
    server = "/var/lib/rancher/k3s/server"
    m = rack.machine
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(f"https://{m.address}:16443/cacerts", context=unverified, timeout=30) as answer:
        cacerts = answer.read()
    return {"server-ca": m.path(f"{server}/tls/server-ca.crt").read_bytes(),
            "token-hash": m.path(f"{server}/token").read_text().split("::")[0].removeprefix("K10"),
            "agent-token-hash": m.path(f"{server}/agent-token").read_text().split("::")[0].removeprefix("K10"),
            "cacerts-hash": k3s_standin.ca_hash(cacerts)}


def _swap_jumphost(rack, name: str) -> None:
    """The jumphost dies; a fresh one flashed from the same image takes its place and address."""
    old = rack.machine
    old.destroy()
    rack.machines.remove(old)
    rack.machine = rack.add_machine(name, "console=ttyS0 rackboot.rack=loop", address=rack.profile().jumphost.address)
    rack.install_netboot(rack.machine)


def _bring_up(rack) -> str:
    done = rack.agent()
    assert done.returncode == 0, done.stderr + rack.status_text()
    return done.stdout + done.stderr + rack.status_text() + rack.machine.journal("k3s.service")


@pytest.fixture
def swap_rack(tmp_path):
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", b"loop-rack-token-ca-swap-5e1")
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    rack.sm = sm
    yield rack
    rack.destroy()
    sm.stop()


@pytest.mark.machine
def test_a_swapped_jumphost_keeps_the_racks_ca_and_token_hash(swap_rack, authority):
    rack = swap_rack
    rack.sm.add(PROJECT, NAME, authority.archive)
    rack.edit_profile(lambda p: p["k3s"].update(ca=str(REF)))
    output = _bring_up(rack)
    first = _jumphost_facts(rack)
    files = files_of(authority.archive)
    assert first["server-ca"] == files["server-ca.crt"]
    assert first["token-hash"] == first["agent-token-hash"] == first["cacerts-hash"] == root_hash(authority)
    _swap_jumphost(rack, "jumphost-2")
    output += _bring_up(rack)
    second = _jumphost_facts(rack)
    assert second == first        # a Pi's token pinned to the first jumphost validates against the second
    for name, content in files.items():
        assert rack.machine.path(f"/var/lib/rancher/k3s/server/tls/{name}").read_bytes() == content
    assert not any(line in output for line in key_lines(files))


@pytest.mark.machine
def test_without_k3s_ca_a_swapped_jumphost_has_another_ca(swap_rack):
    rack = swap_rack
    _bring_up(rack)
    first = _jumphost_facts(rack)
    _swap_jumphost(rack, "jumphost-2")
    _bring_up(rack)
    second = _jumphost_facts(rack)
    assert first["server-ca"] != second["server-ca"]
    assert first["token-hash"] != second["token-hash"]
    assert second["token-hash"] == second["cacerts-hash"]


@pytest.mark.machine
def test_a_broken_ca_secret_stops_the_agent_before_k3s_is_installed_or_started(swap_rack, authority, other_authority):
    rack = swap_rack
    files = files_of(authority.archive)
    rack.sm.add(PROJECT, NAME, cluster_ca.archive({**files, "client-ca.key": files_of(other_authority.archive)[
        "client-ca.key"]}))
    rack.edit_profile(lambda p: p["k3s"].update(ca=str(REF)))
    done = rack.agent()
    assert done.returncode != 0
    status = rack.status_text()
    assert f"{REF}: client-ca.key is not the key of client-ca.crt's certificate" in done.stderr + status
    assert not rack.machine.path("/var/lib/rancher/k3s/server/tls").exists()
    assert not rack.machine.path("/etc/systemd/system/k3s.service").exists()
    assert not rack.machine.path("/usr/local/bin/k3s").exists()
    assert not any(line in done.stdout + done.stderr + status for line in key_lines(files))


def test_keys_are_never_in_errors_even_when_their_files_are_named(tmp_path, authority):
    files = files_of(authority.archive)
    files["server-ca.key"] = files["server-ca.key"].replace(b"-----END", b"garbage-----END")
    with pytest.raises(BadInput) as refused:
        k3s_ca_files.read(cluster_ca.archive(files), str(REF))
    assert "server-ca.key" in str(refused.value)
    assert not any(line in str(refused.value) for line in key_lines(files))
