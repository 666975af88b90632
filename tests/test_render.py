"""Rendered files: byte-identical to the expected trees, deterministic, and
accepted by the programs that will read them on the machines."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from firstboot.profile import load_profiles
from image import render
from tests.doubles import k3s_standin

REPO = Path(__file__).resolve().parent.parent
EXPECTED = Path(__file__).parent / "expected"
GOLDEN_RACKS = ("example", "skolo-rack4")
UPDATE = os.environ.get("RACKBOOT_UPDATE_GOLDEN") == "1"

# The keys a rendered config.yaml may hold: the flags the k3s stand-in takes
# (one list, tests/doubles/k3s_standin.py). A key outside them is a typo or a
# flag nobody has tested: `k3s server` logs "Unknown flag ... skipping" and
# starts without it (so the setting is silently lost), `k3s agent` refuses
# to start; either way long after the image was flashed.
K3S_SERVER_KEYS = k3s_standin.SERVER_FLAGS
K3S_AGENT_KEYS = k3s_standin.AGENT_FLAGS


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("render")
    render.render(load_profiles([REPO / "rack-profiles"]), out)
    return out


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("rack", GOLDEN_RACKS)
def test_matches_expected_files(rendered, rack):
    if UPDATE:
        shutil.rmtree(EXPECTED / rack, ignore_errors=True)
        shutil.copytree(rendered / rack, EXPECTED / rack)
        pytest.skip("expected files rewritten; review with git diff")
    got, want = tree(rendered / rack), tree(EXPECTED / rack)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{rack}/{name} differs (RACKBOOT_UPDATE_GOLDEN=1 rewrites)"


def test_same_inputs_same_bytes(build, tmp_path):
    for run in ("a", "b"):
        result = build("render", "rack-profiles", "-o", str(tmp_path / run))
        assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert len(tree(tmp_path / "a")) > 300  # big-rack: one k3s config per Pi


def test_rerender_replaces_rack_and_keeps_the_rest(build, tmp_path):
    first = build("render", "rack-profiles/example.yaml", "-o", str(tmp_path))   # rackboot's directory from now on
    assert first.returncode == 0, first.stderr
    stale = tmp_path / "example" / "stale-file"
    stale.write_text("from an older render\n")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine\n")
    result = build("render", "rack-profiles/example.yaml", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert unrelated.read_text() == "mine\n"
    assert (tmp_path / "example" / "jumphost" / "seed" / "user-data").exists()
    # no staging left behind; only the output marker (image/output.py)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".rackboot-output"]


def test_no_secret_values_and_no_token_key(rendered):
    for path in rendered.rglob("config.yaml"):
        config = yaml.safe_load(path.read_text())
        assert "token" not in config and config["token-file"] == "/etc/rancher/k3s/token"


def _run(argv, **kw):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)


@pytest.mark.parametrize("rack", GOLDEN_RACKS + ("big-rack",))
def test_cloud_init_accepts_user_data(rendered, rack):
    result = _run(["cloud-init", "schema", "-c", str(rendered / rack / "jumphost/seed/user-data")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


@pytest.mark.machine     # root: cloud-init net-convert chowns what it writes
@pytest.mark.parametrize("rack", GOLDEN_RACKS)
def test_cloud_init_renders_network_config(rendered, rack, tmp_path):
    """cloud-init's own converter turns network-config into systemd-networkd
    files; check that the address, route and interface survive it."""
    result = _run(["cloud-init", "devel", "net-convert", "-p", str(rendered / rack / "jumphost/seed/network-config"),
                   "-k", "yaml", "-D", "debian", "-O", "networkd", "-d", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    [network] = (tmp_path / "etc/systemd/network").glob("*.network")
    text = network.read_text()
    [profile] = load_profiles([REPO / "rack-profiles" / f"{rack}.yaml"])
    assert f"Name={profile.jumphost.uplink}\n" in text
    assert f"Address={profile.jumphost.address}/{profile.network.subnet.prefixlen}\n" in text
    assert f"Gateway={profile.network.router}\n" in text


def test_meta_data_names_rack_and_changes_with_profile(rendered):
    meta = yaml.safe_load((rendered / "example/jumphost/seed/meta-data").read_text())
    other = yaml.safe_load((rendered / "skolo-rack4/jumphost/seed/meta-data").read_text())
    assert meta["rackboot-rack"] == "example" and meta["rackboot-role"] == "jumphost"
    assert meta["instance-id"].startswith("rackboot-example-")
    assert meta["instance-id"] != other["instance-id"]


@pytest.mark.parametrize("rack", GOLDEN_RACKS)
def test_systemd_accepts_units(rendered, rack):
    units = sorted(str(p) for p in (rendered / rack).rglob("etc/systemd/system/*") if p.is_file())
    assert len(units) == 5   # jumphost: first-boot agent, dnsmasq, join service; Pi: agent, k3s state mount
    result = _run(["systemd-analyze", "verify", "--man=no", *units])
    # verify exits 0 on unknown keys and only warns: any word about our units is a failure.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("storage", ["tmpfs", "sd"])
def test_rancher_storage_unit(storage, tmp_path):
    """Where a netbooted Pi keeps k3s's state: a tmpfs, or a filesystem found
    by its label (an MBR card has no partition labels), for netbooted Pis only."""
    import dataclasses
    from firstboot.profile import RancherStorage
    [profile] = load_profiles([REPO / "rack-profiles" / "example.yaml"])
    profile = dataclasses.replace(profile, netboot=dataclasses.replace(profile.netboot,
                                                                       rancher_storage=RancherStorage(storage)))
    unit = render.render_rack(profile)[Path("pi/rootfs/etc/systemd/system/var-lib-rancher.mount")]
    assert "ConditionKernelCommandLine=root=/dev/nfs" in unit
    what = {"tmpfs": "What=tmpfs\n", "sd": "What=/dev/disk/by-label/rackboot-state\n"}[storage]
    assert what in unit and "Where=/var/lib/rancher\n" in unit
    (tmp_path / "var-lib-rancher.mount").write_text(unit)
    result = _run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "var-lib-rancher.mount")])
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("rack", GOLDEN_RACKS + ("big-rack",))
def test_dnsmasq_accepts_config(rendered, rack):
    conf = rendered / rack / "jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf"
    result = _run(["dnsmasq", "--test", f"--conf-file={conf}"])
    assert result.returncode == 0, result.stderr
    assert "syntax check OK" in result.stderr


def test_dnsmasq_config_follows_dhcp_mode(rendered):
    proxy = (rendered / "example/jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    full = (rendered / "skolo-rack4/jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf").read_text()
    assert "dhcp-range=192.168.1.0,proxy,255.255.255.0\n" in proxy and "dhcp-host=" not in proxy
    assert "dhcp-host=dc:a6:32:04:00:01,192.168.1.101,skia-rpi-001\n" in full
    assert 'pxe-service=0,"Raspberry Pi Boot"\n' in proxy and 'pxe-service=0,"Raspberry Pi Boot"\n' in full


@pytest.mark.parametrize("rack", GOLDEN_RACKS + ("big-rack",))
def test_k3s_configs_parse_and_use_known_keys(rendered, rack):
    [profile] = load_profiles([REPO / "rack-profiles" / f"{rack}.yaml"])
    server = yaml.safe_load((rendered / rack / "jumphost/rootfs/etc/rancher/k3s/config.yaml").read_text())
    assert set(server) - K3S_SERVER_KEYS == set()
    assert server["node-ip"] == str(profile.jumphost.address)
    assert f"rackboot.dev/rack={rack}" in server["node-label"]
    nodes = sorted((rendered / rack / "pi/nodes").iterdir())
    assert [n.name for n in nodes] == sorted(pi.name for pi in profile.pis)
    for pi in profile.pis:
        agent = yaml.safe_load((rendered / rack / "pi/nodes" / pi.name / "etc/rancher/k3s/config.yaml").read_text())
        assert set(agent) - K3S_AGENT_KEYS == set()
        assert agent["server"] == f"https://{profile.jumphost.address}:{profile.k3s.api_port}"
        assert agent["node-name"] == pi.name
        assert agent["node-label"][:3] == [f"rackboot.dev/rack={rack}", "rackboot.dev/role=pi",
                                          f"rackboot.dev/model={pi.model}"]
        assert [label.split("=", 1) for label in agent["node-label"][3:]] == [list(kv) for kv in pi.labels]


def _standin_config(tmp_path, monkeypatch, command: str, text: str, dropin: str | None = None):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    if dropin is not None:
        (tmp_path / "config.yaml.d").mkdir()
        (tmp_path / "config.yaml.d/50-more.yaml").write_text(dropin)
    monkeypatch.setenv("K3S_CONFIG_FILE", str(config))
    return k3s_standin.load_config([], command)


def test_standin_server_logs_unknown_flag_and_carries_on(tmp_path, monkeypatch, capsys):
    """As k3s (pkg/configfilearg stripInvalidFlags): the key is logged and skipped."""
    config = _standin_config(tmp_path, monkeypatch, "server", "node-name: a\nnode-lable:\n  - x=y\n")
    assert config == {"node-name": "a"}
    assert "Unknown flag --node-lable found in config.yaml, skipping" in capsys.readouterr().err


def test_standin_agent_refuses_unknown_flag(tmp_path, monkeypatch, capsys):
    """k3s filters only the server's config; the agent's flag parser refuses the key."""
    with pytest.raises(SystemExit):
        _standin_config(tmp_path, monkeypatch, "agent", "server: https://h:6443\ndisable:\n  - traefik\n")
    assert "flag provided but not defined: -disable" in capsys.readouterr().err


def test_standin_dropins_replace_keys_unless_appended(tmp_path, monkeypatch):
    """As k3s: a drop-in's key replaces the earlier value; KEY+ appends to it."""
    base = "node-label:\n  - a=1\ntls-san:\n  - one\n"
    config = _standin_config(tmp_path, monkeypatch, "server", base, "node-label:\n  - b=2\ntls-san+:\n  - two\n")
    assert config["node-label"] == ["b=2"] and config["tls-san"] == ["one", "two"]


def test_router_hosts_snippet(rendered):
    assert (rendered / "skolo-rack4/router/hosts").read_text().splitlines()[-1] == \
        "192.168.1.8 skolo-rack4-jumphost metadata prometheus"


def test_template_error_names_the_template_and_writes_nothing(tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES, templates)
    (templates / "router/hosts.j2").write_text("{{ p.no_such_field }}\n")
    monkeypatch.setattr(render, "TEMPLATES", templates)
    with pytest.raises(render.RackbootError, match=r"templates/router/hosts.j2.*no_such_field"):
        render.render(load_profiles([REPO / "rack-profiles/example.yaml"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
