"""Seeds: a CIDATA FAT image with the rack's files, and optionally the
agent's environment and credentials as vendor-data."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from firstboot.errors import BadInput
from firstboot.profile import load_profiles
from image import seed

REPO = Path(__file__).resolve().parent.parent
[EXAMPLE] = load_profiles([REPO / "rack-profiles/example.yaml"])


def seed_files(image: Path) -> dict[str, str]:
    listing = subprocess.run(["mdir", "-b", "-i", str(image), "::/"], capture_output=True, text=True, check=True)
    names = sorted(Path(line).name for line in listing.stdout.split())
    return {name: subprocess.run(["mtype", "-i", str(image), f"::/{name}"], capture_output=True, text=True,
                                 check=True).stdout for name in names}


def test_seed_holds_the_rendered_files(tmp_path):
    image = seed.make_seed(EXAMPLE, tmp_path)
    assert image == tmp_path / "seed-example.img"
    label = subprocess.run(["fatlabel", str(image)], capture_output=True, text=True, check=True).stdout.strip()
    assert label == "CIDATA"
    files = seed_files(image)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["user-data"] == (REPO / "tests/expected/example/jumphost/seed/user-data").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["seed-example.img"]


def test_vendor_data_carries_environment_and_credentials(tmp_path):
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----x"}))
    files = seed_files(seed.make_seed(EXAMPLE, tmp_path, {"SECRET_MANAGER_EMULATOR_HOST": "192.168.1.1:8470"}, key))
    vendor = yaml.safe_load(files["vendor-data"])
    written = {f["path"]: f for f in vendor["write_files"]}
    assert written["/etc/rackboot/credentials.json"]["permissions"] == "0600"
    assert json.loads(written["/etc/rackboot/credentials.json"]["content"])["type"] == "service_account"
    assert written["/etc/rackboot/agent.env"]["content"] == (
        "GOOGLE_APPLICATION_CREDENTIALS=/etc/rackboot/credentials.json\n"
        "SECRET_MANAGER_EMULATOR_HOST=192.168.1.1:8470\n")
    (tmp_path / "vendor-data").write_text(files["vendor-data"])
    checked = subprocess.run(["cloud-init", "schema", "-c", str(tmp_path / "vendor-data")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("env, credentials, message", [
    ({"BAD NAME": "x"}, None, "'BAD NAME': not an environment variable name"),
    ({}, "missing.json", "not a readable JSON key file"),
])
def test_bad_agent_settings_are_bad_input(tmp_path, env, credentials, message):
    with pytest.raises(BadInput, match=message):
        seed.make_seed(EXAMPLE, tmp_path, env, tmp_path / credentials if credentials else None)
    assert list(tmp_path.iterdir()) == []


def test_seed_command(build, tmp_path):
    result = build("seed", "rack-profiles/example.yaml", "rack-profiles/skolo-rack4.yaml", "-o", str(tmp_path),
                   "--agent-env", "RACKBOOT_SECRET_MANAGER_ENDPOINT=secretmanager.example.internal")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "seed-example.img"), str(tmp_path / "seed-skolo-rack4.img")]
    assert "RACKBOOT_SECRET_MANAGER_ENDPOINT=secretmanager.example.internal" in \
        seed_files(tmp_path / "seed-skolo-rack4.img")["vendor-data"]
    bad = build("seed", "rack-profiles/example.yaml", "-o", str(tmp_path / "x"), "--agent-env", "NOEQUALS")
    assert bad.returncode == 2 and "--agent-env 'NOEQUALS': expected NAME=VALUE" in bad.stderr


def test_boot_without_an_image_says_how_to_build_one(build, tmp_path):
    result = build("boot", "rack-profiles/example.yaml", "-o", str(tmp_path), "--until-report")
    assert result.returncode == 2
    assert f"{tmp_path}/jumphost.img does not exist" in result.stderr
    assert "./build.py image rack-profiles/example.yaml" in result.stderr
    two = build("boot", "rack-profiles/example.yaml", "rack-profiles/skolo-rack4.yaml", "-o", str(tmp_path))
    assert two.returncode == 2 and "boot takes one rack; got 2" in two.stderr
