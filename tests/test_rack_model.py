"""The rack model the build leaves beside each rendered rack (RACK/profile.json)
and the agent reads at boot instead of the YAML (firstboot/rack_model.py)."""

import json
import shutil
from pathlib import Path

import pytest

from firstboot import rack_model
from firstboot.errors import BadInput
from firstboot.layout import RACK_MODEL, Layout
from firstboot.profile import load_profiles
from image import render

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "rack-profiles"


@pytest.fixture
def machine(tmp_path):
    """A machine whose image holds the example racks' rendered trees and
    profiles (copied, so the models must not lean on the checkout's paths)."""
    layout = Layout(tmp_path)
    shutil.copytree(PROFILES, layout.profiles)
    profiles = load_profiles([PROFILES])
    render.render(profiles, layout.racks)
    return layout, profiles


def test_the_agent_reads_what_the_builder_checked(machine):
    layout, profiles = machine
    models = rack_model.read_all(layout)
    assert [m.rack for m in models] == sorted(p.rack for p in profiles)
    for model in models:
        [profile] = [p for p in profiles if p.rack == model.rack]
        # The same rack, with its files where the machine keeps them.
        assert model.source == layout.profiles / profile.source.name
        assert model.manifests == tuple(layout.profiles / m.relative_to(PROFILES) for m in profile.manifests)
        assert all(m.is_file() for m in model.manifests)
        assert model == profile.__class__(**{**profile.__dict__, "source": model.source,
                                             "manifests": model.manifests})


def test_the_model_names_no_build_host_path(machine):
    layout, _ = machine
    for path in layout.racks.glob(f"*/{RACK_MODEL}"):
        assert str(REPO) not in path.read_text()


@pytest.mark.parametrize("damage, expected", [
    (lambda text: text[:-20], "not JSON"),
    (lambda text: text.replace('"format_version": 5', '"format_version": 4'), "format_version 4"),
    (lambda text: text.replace('"rack": "example"', '"rack": "other"'), "holds rack 'other', not 'example'"),
    (lambda text: text.replace('"source": "example.yaml"', '"source": "/etc/shadow"'), "/etc/shadow: not a path"),
    (lambda text: text.replace('"source": "example.yaml"', '"source": "../x.yaml"'), "../x.yaml: not a path"),
])
def test_a_damaged_model_is_refused_naming_its_file(machine, damage, expected):
    layout, _ = machine
    path = layout.rack_model("example")
    path.write_text(damage(path.read_text()))
    with pytest.raises(BadInput) as caught:
        rack_model.read_all(layout)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)
    assert caught.value.hint


def test_a_model_that_is_not_a_regular_file_is_refused(machine):
    layout, _ = machine
    path = layout.rack_model("example")
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(BadInput, match="cannot read the rack model"):
        rack_model.read_all(layout)


def test_an_image_without_models_says_so(tmp_path):
    with pytest.raises(BadInput, match="no rack models") as caught:
        rack_model.read_all(Layout(tmp_path))
    assert "build it again" in caught.value.hint


def test_the_model_is_a_json_object_in_the_models_format():
    [profile] = load_profiles([PROFILES / "example.yaml"])
    data = json.loads(rack_model.dumps(profile))
    assert data["format_version"] == 5 and data["rack"] == "example"
    assert data["source"] == "example.yaml"
