"""The frozen model that everything downstream reads."""

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest

from firstboot import secretref
from firstboot.errors import ProfileError
from firstboot.profile import SCHEMA_PATH, BootDirBy, DhcpMode, PiModel, checks, load_profiles

REPO = Path(__file__).resolve().parent.parent


def test_example_profiles_load_into_frozen_model():
    racks = {p.rack: p for p in load_profiles([REPO / "rack-profiles"])}
    assert sorted(racks) == ["big-rack", "example", "skolo-rack4"]
    rack4 = racks["skolo-rack4"]
    assert rack4.jumphost.address == ipaddress.IPv4Address("192.168.1.8")
    assert rack4.netboot.dhcp is DhcpMode.FULL and rack4.netboot.boot_dir_by is BootDirBy.SERIAL
    assert [pi.model for pi in rack4.pis] == [PiModel.PI4] * 4     # its Pi 5s wait (README, "Raspberry Pi 5")
    assert str(rack4.k3s.token) == "berglas://skia-secrets/etc/k3s-node-token"   # from defaults.yaml
    assert rack4.secrets[1].data[0][1].key == "key.json"
    assert [m.name for m in rack4.manifests][0] == "00-namespace.yaml"
    assert len(racks["big-rack"].pis) == 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        rack4.rack = "other"


def test_schema_defaults_are_the_model_defaults():
    """The schema documents defaults; the model applies them. They must agree."""
    schema = json.loads(SCHEMA_PATH.read_text())
    [minimal] = load_profiles([REPO / "tests/profiles/broken/valid-baseline.yaml"])
    props = schema["properties"]
    assert minimal.jumphost.uplink == props["jumphost"]["properties"]["uplink"]["default"]
    assert minimal.k3s.api_port == props["k3s"]["properties"]["api_port"]["default"]
    nb = props["netboot"]["properties"]
    assert minimal.netboot.dhcp == nb["dhcp"]["default"]
    assert minimal.netboot.boot_dir_by == nb["boot_dir_by"]["default"]
    assert minimal.netboot.rancher_storage == nb["rancher_storage"]["default"]
    assert minimal.netboot.tftp_root == nb["tftp_root"]["default"]
    assert minimal.netboot.nfs_root == nb["nfs_root"]["default"]
    assert minimal.netboot.join_port == nb["join_port"]["default"]
    assert minimal.network.dns == (minimal.network.router,)


def test_macs_are_normalised():
    racks = {p.rack: p for p in load_profiles([REPO / "tests/profiles/broken/valid-baseline.yaml"])}
    assert racks["valid-baseline"].pis[0].mac == "dc:a6:32:00:00:01"


def test_digest_follows_content(tmp_path):
    (tmp_path / "a.yaml").write_text((REPO / "tests/profiles/broken/defaults.yaml").read_text() + "rack: a\n")
    [first] = load_profiles([tmp_path / "a.yaml"])
    [again] = load_profiles([tmp_path / "a.yaml"])
    (tmp_path / "a.yaml").write_text((tmp_path / "a.yaml").read_text() + "description: changed\n")
    [changed] = load_profiles([tmp_path / "a.yaml"])
    assert first.digest == again.digest != changed.digest


@pytest.mark.parametrize("text", [
    "berglas://skia-secrets/etc/k3s-node-token", "berglas://b-1.x/o#1234",
    "sm://skia-infra/k3s-token", "sm://skia-infra/k3s-token#3", "sm://123456/tok#latest",
    "file:///etc/rackboot/k3s-token"])
def test_secret_references_round_trip(text):
    assert str(secretref.parse(text)) == text


@pytest.mark.parametrize("text", [
    "gs://b/o", "berglas://b", "berglas://bucket/o#x", "sm://proj/a/b", "sm://p/n", "sm://project/n#0",
    "file://relative", "plain", "sm://skia-infra/k3s-token\n", " sm://skia-infra/k3s-token",
    "berglas://skia-secrets/etc/k3s node token", "file:///etc/rackboot/../shadow", "file:///etc/a,b",
    "file:///etc//token", "file:///etc/token\x00", "sm://skia-infra/k3s-token\u2028", "file:///etc/t\u00f6ken"])
def test_secret_references_rejected(text):
    with pytest.raises(secretref.SecretRefError):
        secretref.parse(text)


def _rack(tmp_path, text: str) -> Path:
    (tmp_path / "defaults.yaml").write_text((REPO / "tests/profiles/broken/defaults.yaml").read_text())
    (tmp_path / "r.yaml").write_text(f"rack: r\n{text}\n")
    return tmp_path / "r.yaml"


def test_checks_of_meaning_wait_for_the_schema(tmp_path):
    """A pi outside the subnet is a problem of meaning; a bad MAC is the
    schema's. The checks of meaning see only what the schema accepted."""
    pis = '[{name: a, model: pi4, serial: "00000001", address: 10.9.9.9}, {name: b, model: pi4, mac: zz}]'
    with pytest.raises(ProfileError) as caught:
        load_profiles([_rack(tmp_path, f"pis: {pis}")])
    assert caught.value.problems == [f"{tmp_path}/r.yaml: pis[1].mac: 'zz' is not a MAC address"]
    with pytest.raises(ProfileError) as caught:
        load_profiles([_rack(tmp_path, f"pis: {pis.replace('mac: zz', 'mac: dc:a6:32:00:00:01')}")])
    assert [line.split(": ", 2)[1] for line in caught.value.problems] == ["pis[0].address", "pis[1].serial"]


def test_a_check_that_fails_is_a_bug_not_a_problem(tmp_path, monkeypatch):
    """No check's exception is taken for "the schema already said so"."""
    def broken(doc):
        return iter([doc["no-such-key"]])
    monkeypatch.setattr(checks, "SEMANTIC_CHECKS", checks.SEMANTIC_CHECKS + (broken,))
    with pytest.raises(KeyError, match="no-such-key"):
        load_profiles([_rack(tmp_path, "")])
