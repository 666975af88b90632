"""firstboot/layout.py: the one place rackboot's paths are spelled. What the
builder renders and lays down is found where the agent looks for it."""

from pathlib import Path, PurePosixPath

import pytest
import yaml

from firstboot.layout import MACHINE, Layout, Role, rendered_key
from firstboot.profile import load_profiles
from image import render

REPO = Path(__file__).resolve().parent.parent
[EXAMPLE] = [p for p in load_profiles([REPO / "rack-profiles"]) if p.rack == "example"]


def test_an_image_tree_holds_the_machine_paths_beneath_it(tmp_path):
    tree = Layout(tmp_path)
    for part in ("agent_dir", "profiles", "k3s_bundles", "racks", "token_file", "units", "pi_root", "state_dir"):
        assert getattr(tree, part) == tmp_path / getattr(MACHINE, part).relative_to("/"), part
    assert tree.k3s_bundle("v1.31.4+k3s1") == tmp_path / "usr/lib/rackboot/k3s/v1.31.4+k3s1"


def test_the_environment_moves_only_its_parts(tmp_path):
    moved = Layout.from_environment({"RACKBOOT_PROFILES": str(tmp_path / "p"), "RACKBOOT_STATE_DIR": str(tmp_path / "s"),
                                     "RACKBOOT_RACKS": ""})
    assert (moved.profiles, moved.state_dir) == (tmp_path / "p", tmp_path / "s")
    assert moved.racks == MACHINE.racks and moved.token_file == MACHINE.token_file   # empty or unset: not moved
    assert Layout.from_environment({}) == MACHINE
    assert MACHINE.moving(k3s_bundles=tmp_path).k3s_bundles == tmp_path
    with pytest.raises(ValueError, match="token_file"):
        MACHINE.moving(token_file=tmp_path)


def test_the_agent_finds_each_rendered_file_where_render_puts_it():
    files = render.render_rack(EXAMPLE)
    pi = EXAMPLE.pis[0]
    for role, node in ((Role.JUMPHOST, EXAMPLE.jumphost.hostname), (Role.PI, pi.name)):
        source = MACHINE.k3s_config_source(EXAMPLE.rack, role, node)
        assert source.relative_to(MACHINE.rack(EXAMPLE.rack)) in files, (role, source)
    for path in (MACHINE.dnsmasq_conf, MACHINE.exports, MACHINE.unit("rackboot-join.service")):
        assert rendered_key(Role.JUMPHOST, path) in files, path
    assert rendered_key(Role.PI, MACHINE.unit("rackboot-firstboot.service")) in files


def test_rendered_files_name_the_layouts_paths():
    files = render.render_rack(EXAMPLE)
    server = yaml.safe_load(files[rendered_key(Role.JUMPHOST, MACHINE.k3s_config)])
    assert (server["token-file"], server["agent-token-file"]) == (str(MACHINE.token_file), str(MACHINE.agent_token_file))
    agent = yaml.safe_load(files[rendered_key(Role.PI, MACHINE.k3s_config, EXAMPLE.pis[0].name)])
    assert agent["token-file"] == str(MACHINE.token_file)
    unit = files[rendered_key(Role.JUMPHOST, MACHINE.unit("rackboot-firstboot.service"))]
    assert f"Environment=PYTHONPATH={MACHINE.agent_dir}\n" in unit
    assert f"EnvironmentFile=-{MACHINE.agent_env}\n" in unit
    assert f"--conf-file={MACHINE.dnsmasq_conf} " in files[rendered_key(Role.JUMPHOST,
                                                                       MACHINE.unit("rackboot-dnsmasq.service"))]
    assert rendered_key(Role.PI, "/etc/x", "pi-1") == PurePosixPath("pi/nodes/pi-1/etc/x")
