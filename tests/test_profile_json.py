"""The rack model as JSON (firstboot/profile/json_model.py): what the build
writes beside each rack's rendered tree for the agent. It must read back as
exactly the model that was written, and refuse anything else: another
format version, keys missing or left over, values of the wrong kind."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstboot import secretref
from firstboot.errors import BadInput, ProfileError
from firstboot.profile import (FORMAT_VERSION, K3s, KubeSecret, RackProfile, SecretImport, from_json, load_profiles,
                               to_json)

REPO = Path(__file__).resolve().parent.parent
PROFILES = sorted(REPO.glob("rack-profiles/*.yaml")) + sorted(REPO.glob("tests/profiles/*/*.yaml"))


def through_json(profile: RackProfile) -> RackProfile:
    """As the build writes it and the agent reads it: text in between."""
    return from_json(json.loads(json.dumps(to_json(profile), allow_nan=False)))


def loadable() -> list[RackProfile]:
    profiles = []
    for path in PROFILES:
        if path.name == "defaults.yaml":
            continue
        try:
            profiles += load_profiles([path])
        except ProfileError:
            continue     # the broken corpus
    return profiles


def test_every_profile_that_loads_reads_back_exactly():
    profiles = loadable()
    assert {"example", "skolo-rack4", "big-rack", "valid-baseline", "loop"} <= {p.rack for p in profiles}
    for profile in profiles:
        assert through_json(profile) == profile, profile.source


def test_json_names_its_format_and_holds_plain_values():
    [profile] = load_profiles([REPO / "rack-profiles" / "skolo-rack4.yaml"])
    data = to_json(profile)
    assert data["format_version"] == FORMAT_VERSION == 5
    assert data["netboot"]["dhcp"] == "full" and data["jumphost"]["address"] == "192.168.1.8"
    assert data["k3s"]["token"] == {"ref": "berglas://skia-secrets/etc/k3s-node-token", "key": None}
    assert data["source"] == str(profile.source)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 6, 0, "5", 5.0, True, None])
def test_unknown_format_version_is_refused(version):
    [profile] = load_profiles([REPO / "rack-profiles" / "example.yaml"])
    data = to_json(profile) | {"format_version": version}
    with pytest.raises(BadInput) as caught:
        from_json(data)
    assert f"rack model: format_version {version!r}: this rackboot reads format_version 5 only" == str(caught.value)
    assert caught.value.exit_status == 2 and "build the image again" in caught.value.hint


def test_missing_format_version_is_refused():
    [profile] = load_profiles([REPO / "rack-profiles" / "example.yaml"])
    data = to_json(profile)
    del data["format_version"]
    with pytest.raises(BadInput, match=r"^rack model: no format_version: this rackboot reads format_version 5 only$"):
        from_json(data)


def _set(path, value):
    def change(data):
        *parents, last = path
        for part in parents:
            data = data[part]
        data[last] = value
    return change


def _delete(path):
    def change(data):
        *parents, last = path
        for part in parents:
            data = data[part]
        del data[last]
    return change


@pytest.mark.parametrize("change, message", [
    (_delete(["network", "router"]), "network.router: is missing"),
    (_set(["pis", 0, "colour"], "red"), "pis[0].colour: unknown key (allowed here: name, model, mac, serial, "
                                        "address, labels)"),
    (_set(["k3s", "api_port"], "6443"), "k3s.api_port: expected an integer, got a string"),
    (_set(["k3s", "api_port"], True), "k3s.api_port: expected an integer, got true or false"),
    (_set(["pis", 0, "model"], "pi3"), "pis[0].model: 'pi3' is not one of pi4, pi5"),
    (_set(["jumphost", "address"], "192.168.1.256"), "jumphost.address: Octet 256 (> 255) not permitted in "
                                                     "'192.168.1.256'"),
    (_set(["netboot", "dhcp_range"], ["192.168.1.100"]), "netboot.dhcp_range: expected 2 items, got 1"),
    (_set(["k3s", "token"], {"ref": "gs://b/o", "key": None}), "k3s.token.ref: 'gs://b/o': unknown scheme 'gs' "
                                                              "(berglas, sm or file)"),
    (_set(["k3s", "token"], "sm://p/n"), "k3s.token: expected an object, got a string"),
    (_set(["pis"], {}), "pis: expected a list, got a mapping"),
])
def test_wrong_model_is_refused_naming_where(change, message):
    [profile] = load_profiles([REPO / "rack-profiles" / "skolo-rack4.yaml"])
    data = copy.deepcopy(to_json(profile))
    change(data)
    with pytest.raises(BadInput) as caught:
        from_json(data)
    assert str(caught.value) == f"rack model: {message}"


def test_not_an_object_is_refused():
    with pytest.raises(BadInput, match=r"^rack model: expected a JSON object, got a list$"):
        from_json([])


# Any model, not only those a profile makes: every field's type, None where
# it may be, strings with anything in them.
REFS = st.builds(secretref.parse, st.sampled_from(["sm://rackboot-test/x", "sm://p-123456/k3s-token#3",
                                                  "berglas://b-1.x/etc/o#1234", "file:///etc/rackboot/token"]),
                 st.none() | st.text())
PREFIXES = st.builds(secretref.parse_prefix, st.sampled_from(["berglas://skia-secrets/skolo-rack4/",
                                                              "sm://rackboot-test/rack-", "file:///etc/rackboot/s/"]))
PATHS = st.builds(Path, st.text())
MODELS = st.builds(
    RackProfile, source=PATHS, manifests=st.lists(PATHS).map(tuple),
    k3s=st.builds(K3s, token=REFS),
    secrets=st.lists(st.builds(KubeSecret, data=st.lists(st.tuples(st.text(), REFS)).map(tuple))).map(tuple),
    secret_imports=st.lists(st.builds(SecretImport, source=PREFIXES,
                                      required=st.lists(st.text()).map(tuple))).map(tuple))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(MODELS)
def test_any_model_reads_back_exactly(profile):
    assert through_json(profile) == profile
