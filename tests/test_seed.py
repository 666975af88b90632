"""Seeds: a CIDATA FAT image with the rack's files, and optionally the
agent's environment and credentials as vendor-data."""

import json
import os
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


# ------------------------------------------------------------------ credentials: 0600


def test_seed_with_credentials_is_private(tmp_path, build):
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----x"}))
    out = tmp_path / "out"
    plain = build("seed", "rack-profiles/example.yaml", "-o", str(out))
    assert plain.returncode == 0, plain.stderr
    assert (out / "seed-example.img").stat().st_mode & 0o777 == 0o644
    secret = build("seed", "rack-profiles/example.yaml", "-o", str(out), "--credentials", str(key))
    assert secret.returncode == 0, secret.stderr
    assert (out / "seed-example.img").stat().st_mode & 0o777 == 0o600     # also when it replaces a 0644 one
    assert "BEGIN PRIVATE KEY" not in secret.stdout + secret.stderr


# ------------------------------------------------------------------ agent.env as systemd reads it

ENVIRONMENT_D_GENERATOR = Path("/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator")
# Values systemd must read back exactly (each would break an unquoted NAME=VALUE line).
ODD_VALUES = ["host:8470", "with space", " leading", "trailing ", "  ", '"quoted"', '"', "'", "it's",
              "back\\slash", "ends with a backslash\\", "\\\\n", "#not a comment", ";not a comment", "a=b",
              "`tick`", "ü ✓", "zero\u200bwidth", "https://sm.example/v1?x=1&y=2", "a,b:c"]


def shell_unquote(text: str) -> str:
    """systemd's environment generator prints values shell-quoted: undo bare
    or double-quoted POSIX quoting (backslash escapes $ ` " \\ inside quotes)."""
    if not text.startswith('"'):
        return text
    assert text.endswith('"') and len(text) >= 2
    out, body, i = [], text[1:-1], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '$`"\\':
            out.append(body[i + 1])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def systemd_reads(text: str, tmp_path: Path) -> dict[str, str]:
    """NAME -> value as systemd's environment-file reader takes text: the
    environment.d generator uses the reader EnvironmentFile= uses
    (parse_env_file), then expands $VAR, which is why values with $ are
    checked by rule below instead."""
    if not ENVIRONMENT_D_GENERATOR.exists():
        pytest.skip("systemd's environment.d generator is not installed (tests/run installs systemd)")
    (tmp_path / "environment.d").mkdir()
    (tmp_path / "environment.d" / "agent.conf").write_text(text)
    result = subprocess.run([str(ENVIRONMENT_D_GENERATOR)], env={"XDG_CONFIG_HOME": str(tmp_path)},
                            capture_output=True, text=True, check=True)
    assert result.stderr == "", result.stderr
    return dict((name, shell_unquote(value)) for name, _, value in
                (line.partition("=") for line in result.stdout.splitlines()))


def test_systemd_reads_exactly_the_values_given(tmp_path):
    env = {f"V{i}": value for i, value in enumerate(ODD_VALUES)}
    text = seed.agent_env_file.render(env)
    got = systemd_reads(text, tmp_path)
    assert {name: got.get(name) for name in env} == env


def test_values_with_dollar_and_empty_values_by_rule():
    """$ is not expanded in EnvironmentFile= (systemd.exec(5)); escaped anyway,
    so a shell sourcing the file reads the same. An empty value is "" ."""
    assert seed.agent_env_file.render({"A": "$HOME ${X}", "B": ""}) == 'A="\\$HOME \\${X}"\nB=""\n'


# ------------------------------------------------------------------ bad --agent-env and --credentials through the command line

BAD_AGENT_ENV = [
    (["1BAD=x"], "'1BAD': not an environment variable name"),
    (["BAD-NAME=x"], "'BAD-NAME': not an environment variable name"),
    (["=value"], "'': not an environment variable name"),
    (["NAME WITH SPACE=x"], "'NAME WITH SPACE': not an environment variable name"),
    (["A=line\nbreak"], "--agent-env A: its value holds a control character (U+000A) at character 5"),
    (["A=tab\there"], "--agent-env A: its value holds a control character (U+0009)"),
    (["A=cr\r"], "--agent-env A: its value holds a control character (U+000D)"),
    (["A=\x1b[31mred"], "--agent-env A: its value holds a control character (U+001B) at character 1"),
    (["A=nul\x7f"], "--agent-env A: its value holds a control character (U+007F)"),
    (["A=\ufeffbom"], "--agent-env A: its value holds U+FEFF, which systemd refuses"),
    (["A=\ufffe"], "--agent-env A: its value holds U+FFFE"),
    (["A=not utf-8 \udcff"], "--agent-env A: its value holds bytes that are not UTF-8"),
    (["A=1", "A=2"], "--agent-env A: given twice"),
    (["hunter2secret-without-equals!"], "--agent-env: a setting without '=' (not shown"),
    (["GOOGLE_APPLICATION_CREDENTIALS=/elsewhere.json"], "--agent-env GOOGLE_APPLICATION_CREDENTIALS: --credentials sets it"),
]


@pytest.mark.parametrize("settings, message", BAD_AGENT_ENV, ids=[m.split(":")[0] + str(i) for i, (s, m) in
                                                                 enumerate(BAD_AGENT_ENV)])
@pytest.mark.parametrize("verb", ["seed", "boot"])
def test_bad_agent_env_is_refused(build, tmp_path, settings, message, verb):
    out = tmp_path / "out"
    args = [a for s in settings for a in ("--agent-env", s)]
    if "GOOGLE_APPLICATION_CREDENTIALS" in settings[0]:
        (tmp_path / "key.json").write_text("{}")
        args += ["--credentials", str(tmp_path / "key.json")]
    if verb == "boot":              # boot checks them after finding the image
        out.mkdir()
        (out / ".rackboot-output").write_text("")
        (out / "jumphost.img").write_bytes(b"")
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    result = build(verb, "rack-profiles/example.yaml", "-o", str(out), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for setting in settings:        # values are never shown: they may be secrets
        name, sep, value = setting.partition("=")
        assert (value if sep else setting) not in result.stderr or len(value) < 4
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def bad_key(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.json"
    if kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        return Path("/dev/zero")
    elif kind == "huge":
        path.write_text(json.dumps({"private_key": "x" * 70000}))
    elif kind == "not-json":
        path.write_text("private_key: -----BEGIN PRIVATE KEY-----\n")
    elif kind == "not-utf8":
        path.write_bytes(b'{"private_key": "\xff"}')
    elif kind == "a-list":
        path.write_text("[]")
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "No such file or directory"),
    ("directory", "a directory, not a regular file"),
    ("fifo", "a FIFO, not a regular file"),
    ("device", "a character device, not a regular file"),
    ("huge", "larger than 65536 bytes"),
    ("not-json", "not JSON: Expecting value at line 1 column 1"),
    ("not-utf8", "not UTF-8"),
    ("a-list", "not a JSON object"),
])
def test_bad_credentials_are_refused(build, tmp_path, kind, message):
    key = bad_key(tmp_path, kind)
    out = tmp_path / "out"
    result = build("seed", "rack-profiles/example.yaml", "-o", str(out), "--credentials", str(key))
    assert result.returncode == 2, result.stderr
    assert f"{key}: not a readable JSON key file ({message}" in result.stderr, result.stderr
    assert "BEGIN PRIVATE KEY" not in result.stderr
    assert not out.exists()
