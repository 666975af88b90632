"""build.py push against a pretend jumphost reached over real ssh (Debian's
sshd in a network namespace, tests/lib/ssh_jumphost.py) running the k3s
stand-in: the bundle goes over scp as the admin user, and `sudo -n python3 -m
firstboot bundle install` there verifies it, refuses another rack's or an
older one, puts it in place and runs the agent again (systemctl restart of its
unit, recorded: the agent's run with a pushed bundle is tests/test_bundle_serve.py's).
--dry-run shows the files and, by a server-side dry run against the k3s
API, the objects that would change, and changes nothing."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from firstboot import bundle, bundle_archive
from firstboot.profile import load_profiles
from image import bundle_build, push
from tests.doubles import k3s_standin_bundle
from tests.lib.machine import REPO
from tests.lib.ssh_jumphost import SshJumphost
from tests import test_attach
from tests.test_attach import free_port

operator, jumphosts = test_attach.operator, test_attach.jumphosts    # the same operator and jumphosts as attach's

PI = "  - {{name: {name}, model: pi4, serial: {serial}, mac: 'dc:a6:32:00:01:{n:02x}', address: 192.168.1.{a}}}\n"


def write_profile(profiles: Path, rack: str, port: int, pis: list[int], greeting: str, extra: bool = False,
                  k3s_version: str | None = None) -> Path:
    (profiles / "kube").mkdir(exist_ok=True)
    (profiles / "kube" / f"{rack}.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hello, namespace: default}\n"
        f"data: {{greeting: {greeting}}}\n"
        + ("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: default}\ndata: {a: b}\n"
           if extra else ""))
    path = profiles / f"{rack}.yaml"
    path.write_text(
        f"rack: {rack}\njumphost: {{hostname: jh-a, ssh_host: jh-a}}\nk3s: {{attach_port: {port}"
        + (f", version: '{k3s_version}'" if k3s_version else "") + "}\n"
        "netboot: {dhcp: full, dhcp_range: {start: 192.168.1.100, end: 192.168.1.150}}\n"
        f"manifests: [kube/{rack}.yaml]\npis:\n"
        + "".join(PI.format(name=f"pi-{n}", serial=f"0c0c0c{n:02x}", n=n, a=20 + n) for n in pis))
    return path


def as_rackboot_jumphost(jumphost: SshJumphost, operator, revision: int) -> Path:
    """What the image and a first boot leave on the jumphost: the agent (with
    its libraries), rack-a's bundle at revision, the agent's status (rack-a
    identified, its YAML applied); systemctl records what it is asked."""
    image = jumphost.root / "image"
    agent = image / "agent"
    shutil.copytree(REPO / "firstboot", agent / "firstboot", ignore=shutil.ignore_patterns("__pycache__"))
    (agent / "site-packages").symlink_to(sysconfig.get_paths()["purelib"])
    real = k3s_standin_bundle.real_bundle()           # the image's k3s, the rack's version
    if real:
        shutil.copytree(real, agent / "k3s" / real.name)
    else:
        [profile] = load_profiles([operator["profiles"] / "rack-a.yaml"])
        k3s_standin_bundle.make(agent / "k3s", profile.k3s.version)
    state = image / "state"
    state.mkdir(parents=True)
    systemctl = image / "systemctl"
    systemctl.write_text(f"#!/bin/sh\necho \"$*\" >> {image / 'systemctl.log'}\n")
    systemctl.chmod(0o755)
    built = run_build("bundle", str(operator["profiles"] / "rack-a.yaml"), "-o", str(image / "built"),
                      "--revision", str(revision), env=operator["env"])
    assert built.returncode == 0, built.stderr
    binds = {"/usr/lib/rackboot": agent, "/usr/share/rackboot/racks": image / "built", "/var/lib/rackboot": state,
             "/usr/bin/systemctl": systemctl}
    for target, source in binds.items():
        if not Path(target).exists():
            Path(target).mkdir(parents=True)        # an empty mount point on the host
        jumphost.enter("mount", "--bind", str(source), target)
    first_run = jumphost.enter(sys.executable, "-c", AGENT_APPLY, check=False)
    assert first_run.returncode == 0, first_run.stderr + jumphost.logs()
    return image


# The agent's apply step as its first boot ran it, inside the jumphost.
AGENT_APPLY = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from firstboot import apply, rack_model, state
from firstboot.layout import Layout
layout = Layout()
[profile] = rack_model.read_all(layout)
result = apply.apply(layout.kubeconfig, profile)
state.save(layout, {{"steps": {{"identify": {{"result": {{"rack": profile.rack}}}}}}, "inventory": result["inventory"]}})
"""
READ_CONFIGMAPS = f"""
import json, sys; sys.path.insert(0, {str(REPO)!r})
from firstboot import apply
from firstboot.layout import Layout
dyn = apply._client(Layout().kubeconfig)
maps = dyn.resources.get(api_version="v1", kind="ConfigMap")
print(json.dumps({{m.metadata.name: dict(m.data or {{}}) for m in dyn.get(maps, namespace="default").items}}))
"""


def run_build(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def pushing(operator, jumphost: SshJumphost, rack: str = "rack-a", *options: str) -> subprocess.CompletedProcess:
    return run_build("push", str(operator["profiles"] / f"{rack}.yaml"), "--to", jumphost.name,
                     "--ssh-config", str(jumphost.ssh_config), *options, env=operator["env"])


def configmaps(jumphost: SshJumphost) -> dict:
    result = jumphost.enter(sys.executable, "-c", READ_CONFIGMAPS)
    return json.loads(result.stdout)


def in_use(jumphost: SshJumphost, image: Path) -> list[str]:
    """What is in rack-a's store of pushed bundles on the jumphost."""
    store = image / "state/bundles/rack-a"
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


@pytest.fixture
def rack_a(operator, jumphosts):
    jumphost = jumphosts("jh-a")
    write_profile(operator["profiles"], "rack-a", free_port(), [1, 2], "hello")
    return jumphost, as_rackboot_jumphost(jumphost, operator, revision=1)


@pytest.mark.machine   # a real sshd in a network namespace
def test_push_a_dry_run_then_the_real_one_then_a_rollback(operator, rack_a):
    jumphost, image = rack_a
    assert configmaps(jumphost) == {"hello": {"greeting": "hello"}}
    # The profile changes: a manifest's value, a new object, Pi 3 added and Pi 2 removed.
    write_profile(operator["profiles"], "rack-a", free_port(), [1, 3], "bonjour", extra=True)
    dry = pushing(operator, jumphost, "rack-a", "--dry-run", "--revision", "2")
    assert dry.returncode == 0, dry.stderr + jumphost.logs()
    out = dry.stdout
    assert "rack rack-a: revision 1 -> 2" in out and "(dry run: nothing changed)" in out
    for line in ("  + tftp/0c0c0c03", "  - tftp/0c0c0c02",
                 "  + pi/nodes/pi-3/etc/rancher/k3s/config.yaml", "  - pi/nodes/pi-2/etc/rancher/k3s/config.yaml",
                 "  ~ jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf", "  ~ profile.json",
                 "  ~ profiles/kube/rack-a.yaml", "  ~ ConfigMap default/hello", "      -  greeting: hello",
                 "      +  greeting: bonjour", "  + ConfigMap default/extra (created)"):
        assert line in out.splitlines(), (line, out)
    assert "  ~ tftp/config.txt" not in out.splitlines()          # unchanged files are not listed
    # nothing changed: no bundle in place, no agent run, the objects as they were, no upload left
    assert in_use(jumphost, image) == [] and not (image / "systemctl.log").exists()
    assert configmaps(jumphost) == {"hello": {"greeting": "hello"}}
    assert list((jumphost.home_root / "rackboot/.rackboot-push").iterdir()) == []

    real = pushing(operator, jumphost, "rack-a", "--revision", "2")
    assert real.returncode == 0, real.stderr + jumphost.logs()
    assert "rack rack-a: revision 1 -> 2" in real.stdout and "installed /var/lib/rackboot/bundles/rack-a/2" in real.stdout
    assert in_use(jumphost, image) == ["2"]
    assert bundle.verify(image / "state/bundles/rack-a/2", "rack-a", 2).revision == 2
    assert (image / "systemctl.log").read_text() == "restart rackboot-firstboot.service\n"
    assert list((jumphost.home_root / "rackboot/.rackboot-push").iterdir()) == []
    # The same revision again changes nothing.
    again = pushing(operator, jumphost, "rack-a", "--revision", "2")
    assert again.returncode == 0 and "revision 2 (sha256:" in again.stdout and "already in use" in again.stdout

    dry_back = pushing(operator, jumphost, "rack-a", "--rollback", "--dry-run")
    assert dry_back.returncode == 0, dry_back.stderr
    assert "rack rack-a: revision 2 -> 1 (rollback)" in dry_back.stdout and "  - tftp/0c0c0c03" in dry_back.stdout
    assert in_use(jumphost, image) == ["2"]
    back = pushing(operator, jumphost, "rack-a", "--rollback")
    assert back.returncode == 0, back.stderr
    assert "withdrew revision 2" in back.stdout
    assert in_use(jumphost, image) == [".withdrawn"]
    assert (image / "systemctl.log").read_text().count("restart rackboot-firstboot.service") == 2
    listing = jumphost.enter("env", f"PYTHONPATH={image / 'agent'}", "/usr/bin/python3", "-m", "firstboot", "bundle", "list",
                             "--rack", "rack-a")
    assert listing.stdout.splitlines()[1].startswith("  revision 1 sha256:") and "(in use)" in listing.stdout
    # Nothing further back than the image's bundle.
    beyond = pushing(operator, jumphost, "rack-a", "--rollback")
    assert beyond.returncode == 2 and "uses its image's bundle here" in beyond.stderr


@pytest.mark.machine   # a real sshd in a network namespace
def test_push_refuses_another_racks_an_older_and_a_corrupt_bundle(operator, rack_a, tmp_path):
    jumphost, image = rack_a
    write_profile(operator["profiles"], "rack-a", free_port(), [1, 2], "v3")
    assert pushing(operator, jumphost, "rack-a", "--revision", "3").returncode == 0
    write_profile(operator["profiles"], "rack-a", free_port(), [1, 2], "older")
    older = pushing(operator, jumphost, "rack-a", "--revision", "2")
    assert older.returncode == 2
    assert "error: revision 2 of rack rack-a is older than revision 3, which this jumphost uses" in older.stderr
    assert "--rollback" in older.stderr and "Traceback" not in older.stderr
    write_profile(operator["profiles"], "rack-b", free_port(), [1], "other")
    other = pushing(operator, jumphost, "rack-b", "--revision", "9")
    assert other.returncode == 2
    assert "error: the bundle is rack rack-b's; this jumphost is rack rack-a's" in other.stderr
    # A bundle damaged on its way: one byte of a file changed inside the archive.
    made = bundle_build.write(load_profiles([operator["profiles"] / "rack-a.yaml"])[0], tmp_path / "b/rack-a", 5, None)
    data = bundle_archive.pack(made.directory)
    spot = data.index(b"greeting: older")
    damaged = tmp_path / "rack-a-r5.tar"
    damaged.write_bytes(data[:spot] + b"greeting: olden" + data[spot + 15:])
    target = push.ssh.Target(jumphost.name, config=jumphost.ssh_config)
    push.ssh.remote(target, ["mkdir", "-p", "--", push.STAGING])
    push._scp(target, damaged, f"{push.STAGING}/{damaged.name}")
    with pytest.raises(push.ssh.SshFailed) as caught:
        push.ssh.remote(target, [*push.AGENT, "install", "--", f"{push.STAGING}/{damaged.name}"])
    assert "its files differ from BUNDLE.json (1 paths, first profiles/kube/rack-a.yaml)" in caught.value.stderr
    assert in_use(jumphost, image) == ["3"] and configmaps(jumphost)["hello"] == {"greeting": "hello"}
    assert (image / "systemctl.log").read_text() == "restart rackboot-firstboot.service\n"
    assert sorted(p.name for p in (image / "state/bundles/rack-a").iterdir()) == ["3"]   # no staging left


@pytest.mark.machine   # a real sshd in a network namespace
def test_push_sends_a_k3s_bundle_with_the_rack_bundle(operator, rack_a, tmp_path):
    """build.py push --k3s-bundle: the k3s bundle checked here, copied, checked
    there and put in place before the rack bundle (the agent's k3s step then
    upgrades: tests/test_k3s_follow.py); a dry run places nothing."""
    jumphost, image = rack_a
    newer = k3s_standin_bundle.next_minor(load_profiles([operator["profiles"] / "rack-a.yaml"])[0].k3s.version)
    fetched = k3s_standin_bundle.make(tmp_path / "fetched", newer)
    pushed_k3s = image / "state/k3s"
    # Without the bundle, a profile that wants a k3s the jumphost lacks is refused there, nothing changed.
    write_profile(operator["profiles"], "rack-a", free_port(), [1, 2], "hello", k3s_version=newer)
    lacking = pushing(operator, jumphost, "rack-a", "--revision", "2")
    assert lacking.returncode == 2, lacking.stderr
    assert f"error: the bundle wants k3s {newer}, which this jumphost has neither in its image nor pushed" \
        in lacking.stderr and "--k3s-bundle DIR" in lacking.stderr
    # A bundle of another version than the profile's: refused before any ssh.
    other = k3s_standin_bundle.make(tmp_path / "other", "v1.31.9+k3s1")
    mismatch = pushing(operator, jumphost, "rack-a", "--revision", "2", "--k3s-bundle", str(other))
    assert mismatch.returncode == 2 and f"wants {newer} (k3s.version)" in mismatch.stderr
    dry = pushing(operator, jumphost, "rack-a", "--revision", "2", "--k3s-bundle", str(fetched), "--dry-run")
    assert dry.returncode == 0, dry.stderr + jumphost.logs()
    assert f"k3s {newer}: verified (dry run: not installed)" in dry.stdout
    assert not pushed_k3s.exists() or not [p for p in pushed_k3s.iterdir() if not p.name.startswith(".")]
    real = pushing(operator, jumphost, "rack-a", "--revision", "2", "--k3s-bundle", str(fetched))
    assert real.returncode == 0, real.stderr + jumphost.logs()
    assert f"k3s {newer}: installed in /var/lib/rackboot/k3s" in real.stdout
    assert in_use(jumphost, image) == ["2"]
    assert sorted(p.name for p in pushed_k3s.iterdir()) == [newer]
    for name in json.loads((fetched / "bundle.json").read_text())["files"]:
        assert (pushed_k3s / newer / name).read_bytes() == (fetched / name).read_bytes(), name
    assert os.access(pushed_k3s / newer / "k3s-arm64", os.X_OK)
    assert list((jumphost.home_root / "rackboot/.rackboot-push").iterdir()) == []     # nothing left behind
    assert (image / "systemctl.log").read_text() == "restart rackboot-firstboot.service\n"


def test_push_checks_its_input_before_any_ssh(operator, tmp_path):
    write_profile(operator["profiles"], "rack-a", 7001, [1], "x")
    profile = str(operator["profiles"] / "rack-a.yaml")
    for args, expected in (
            (["--to=-oProxyCommand=x", "--revision", "1"], "--to '-oProxyCommand=x': not a host name"),
            (["--to", "jh-a", "--ssh-config", str(tmp_path / "none")], "no such file (--ssh-config)"),
            (["--to", "jh-a"], "no revision for rack rack-a's bundle")):
        result = run_build("push", profile, *args, env=operator["env"])
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
