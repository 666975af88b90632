"""build.py attach against pretend jumphosts reached over real ssh (Debian's
sshd in network namespaces, tests/lib/ssh_jumphost.py), running k3s (the
stand-in, or real k3s with RACKBOOT_K3S_BUNDLE). The command attach runs is
a Kubernetes client (the kubernetes Python library) reading KUBECONFIG, so
the kubeconfig, the forward and TLS are checked as kubectl would use them.
After each attach, successful or not, nothing may be left: no kubeconfig,
no directory, no ssh process, the port free again."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from image import kubeconfig, ssh
from tests.lib.machine import REPO
from tests.lib.ssh_jumphost import SshJumphost, keygen

DEFAULTS = (REPO / "rack-profiles" / "defaults.yaml").read_text()
# The operator's command: what a kubectl would do with the KUBECONFIG it is given.
CLIENT = """
import json, os, ssl, stat, sys, time, urllib.request
from pathlib import Path
from kubernetes import client, config

def version(c):      # GET /version as kubectl version does, with the kubeconfig's CA and client certificate
    context = ssl.create_default_context(cafile=c.ssl_ca_cert)
    context.load_cert_chain(c.cert_file, c.key_file)
    return json.load(urllib.request.urlopen(c.host + "/version", context=context))["gitVersion"]

path = os.environ["KUBECONFIG"]
contexts, current = config.list_kube_config_contexts()
api = config.new_client_from_config()
seen = {"argv": sys.argv[1:], "kubeconfig": path, "mode": stat.S_IMODE(os.stat(path).st_mode),
        "directory_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
        "contexts": [c["name"] for c in contexts], "current": current["name"], "server": api.configuration.host,
        "version": version(api.configuration),
        "nodes": [n.metadata.name for n in client.CoreV1Api(api).list_node().items],
        "attached": os.environ["RACKBOOT_ATTACHED"]}
if os.environ.get("ATTACH_TEST_AS_A_SHELL"):    # an interactive shell ignores the terminal's Ctrl-C
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
report = os.environ.get("ATTACH_TEST_REPORT")
if report:                              # hold the attach open until the test says go
    Path(report).write_text(json.dumps(seen))
    while not Path(report + ".go").exists():
        time.sleep(0.05)
    seen["nodes_later"] = [n.metadata.name for n in client.CoreV1Api(api).list_node().items]
print(json.dumps(seen))
sys.exit(int(sys.argv[-1]))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_rack(profiles: Path, name: str, ssh_host: str, port: int) -> None:
    (profiles / f"{name}.yaml").write_text(
        f"rack: {name}\njumphost: {{hostname: {name}-jh, ssh_host: {ssh_host}}}\nk3s: {{attach_port: {port}}}\n")


@pytest.fixture
def operator(tmp_path, monkeypatch):
    """The operator's machine: a home and config directory of its own, no ssh-agent."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    profiles = tmp_path / "rack-profiles"
    profiles.mkdir()
    (profiles / "defaults.yaml").write_text(DEFAULTS)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return {"home": home, "profiles": profiles, "env": {**os.environ, "HOME": str(home),
                                                        "XDG_CONFIG_HOME": str(home / ".config")}}


@pytest.fixture
def jumphosts(tmp_path):
    made = []

    def make(name: str, k3s: bool = True, sshd: bool = True) -> SshJumphost:
        jumphost = SshJumphost(tmp_path / name, name)
        made.append(jumphost)
        if sshd:
            jumphost.start_sshd()
        if k3s:
            jumphost.start_k3s()
        return jumphost
    yield make
    for jumphost in made:
        jumphost.destroy()


@pytest.fixture
def rack_a(operator, jumphosts):
    """rack-a, its jumphost jh-a (sshd and k3s running) and its attach port."""
    jumphost = jumphosts("jh-a")
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    return jumphost, port


def attach_argv(operator, rack: str, jumphost: SshJumphost, *command: str, ssh_config: Path | None = None):
    return [sys.executable, str(REPO / "build.py"), "attach", rack, "--profiles", str(operator["profiles"]),
            "--ssh-config", str(ssh_config or jumphost.ssh_config), "--", *command]


def attach(operator, rack, jumphost, *command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(attach_argv(operator, rack, jumphost, *command, **kwargs), env=operator["env"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)


def ssh_processes(jumphost: SshJumphost, pids: bool = False) -> list:
    """ssh clients of this test's attaches still running on the operator's
    machine (their command lines; with pids, (pid, command line) pairs)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:1] == [b"ssh"] and str(jumphost.ssh_config).encode() in cmdline:
            found.append((int(entry.name), b" ".join(cmdline).decode()) if pids else b" ".join(cmdline).decode())
    return found


def assert_nothing_left(operator, jumphost: SshJumphost, port: int) -> None:
    attach_dir = operator["home"] / ".config/rackboot/attach"
    assert not attach_dir.exists() or list(attach_dir.iterdir()) == []
    assert ssh_processes(jumphost) == []
    assert ssh.port_is_free(port)


@pytest.mark.machine   # a real sshd in a network namespace
def test_attach_runs_the_command_on_the_racks_cluster(operator, rack_a):
    jumphost, port = rack_a
    result = attach(operator, "rack-a", jumphost, sys.executable, "-c", CLIENT, "--", "7")
    assert result.returncode == 7, result.stderr + jumphost.logs()
    seen = json.loads(result.stdout)
    assert seen["argv"] == ["--", "7"]                           # CMD as given, its own -- kept
    assert seen["kubeconfig"] == str(operator["home"] / f".config/rackboot/attach/rack-a.{seen_pid(seen)}/kubeconfig")
    assert seen["mode"] == 0o600 and seen["directory_mode"] == 0o700
    assert seen["contexts"] == ["rack-a"] and seen["current"] == "rack-a" and seen["attached"] == "rack-a"
    assert seen["server"] == f"https://127.0.0.1:{port}"
    assert seen["version"].startswith("v1.31") and seen["nodes"] == ["jh-a"]
    assert not Path(seen["kubeconfig"]).exists()
    assert_nothing_left(operator, jumphost, port)
    # The login was the admin user's, and sudo read k3s's own kubeconfig.
    assert "Accepted publickey for rackboot" in jumphost.logs()


def seen_pid(seen: dict) -> str:
    return Path(seen["kubeconfig"]).parent.name.rpartition(".")[2]


@pytest.mark.machine   # real sshds in network namespaces
def test_two_racks_attached_at_once_do_not_see_each_other(operator, jumphosts, tmp_path):
    ports = {}
    running = {}
    for name in ("rack-a", "rack-b"):
        jumphost = jumphosts(f"jh-{name}")
        ports[name] = free_port()
        write_rack(operator["profiles"], name, jumphost.name, ports[name])
        report = tmp_path / f"{name}.report"
        running[name] = (jumphost, report, subprocess.Popen(
            attach_argv(operator, name, jumphost, sys.executable, "-c", CLIENT, "0"),
            env={**operator["env"], "ATTACH_TEST_REPORT": str(report)}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (jumphost, report, process) in running.items():     # both attached: each has reported
        while not report.exists():
            assert process.poll() is None, process.stderr.read() + jumphost.logs()
            time.sleep(0.05)
    seen = {name: json.loads(report.read_text()) for name, (_, report, _) in running.items()}
    assert seen["rack-a"]["kubeconfig"] != seen["rack-b"]["kubeconfig"]
    for name in running:
        assert seen[name]["contexts"] == [name] and seen[name]["server"] == f"https://127.0.0.1:{ports[name]}"
        assert seen[name]["nodes"] == [f"jh-{name}"]            # its own jumphost's node, not the other's
        # each cluster is its jumphost's own: its CA is not the other's
        text = Path(seen[name]["kubeconfig"]).read_text()
        other = Path(seen["rack-b" if name == "rack-a" else "rack-a"]["kubeconfig"]).read_text()
        ca = yaml.safe_load(text)["clusters"][0]["cluster"]["certificate-authority-data"]
        assert ca != yaml.safe_load(other)["clusters"][0]["cluster"]["certificate-authority-data"]
    for name, (jumphost, report, process) in running.items():
        Path(str(report) + ".go").touch()
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert json.loads(out)["nodes_later"] == [f"jh-{name}"]     # still its own, after the other ended
        assert not Path(seen[name]["kubeconfig"]).parent.exists()
    for name, (jumphost, _, _) in running.items():
        assert_nothing_left(operator, jumphost, ports[name])


@pytest.mark.machine   # a real sshd in a network namespace
def test_the_same_rack_twice_is_refused_while_the_first_is_attached(operator, rack_a, tmp_path):
    jumphost, port = rack_a
    report = tmp_path / "first.report"
    first = start_held(operator, jumphost, report)
    second = attach(operator, "rack-a", jumphost, "true")
    assert second.returncode == 1
    assert f"error: port {port} (k3s.attach_port of rack rack-a) is in use on this machine" in second.stderr
    assert "attached in another shell already" in second.stderr
    Path(str(report) + ".go").touch()
    assert first.wait(timeout=120) == 0
    assert_nothing_left(operator, jumphost, port)


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_command_killed_by_a_signal_and_one_that_cannot_run(operator, rack_a):
    jumphost, port = rack_a
    killed = attach(operator, "rack-a", jumphost, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)")
    assert killed.returncode == 128 + 9, killed.stderr
    assert_nothing_left(operator, jumphost, port)
    missing = attach(operator, "rack-a", jumphost, "/nonexistent/kubectl")
    assert missing.returncode == 2 and "cannot run /nonexistent/kubectl: No such file or directory" in missing.stderr
    assert_nothing_left(operator, jumphost, port)


def start_held(operator, jumphost, report: Path, **env) -> subprocess.Popen:
    """attach running CLIENT, held open until report.go exists, in a session
    of its own (as in a terminal of its own: killpg is that terminal's Ctrl-C)."""
    process = subprocess.Popen(attach_argv(operator, "rack-a", jumphost, sys.executable, "-c", CLIENT, "0"),
                               env={**operator["env"], "ATTACH_TEST_REPORT": str(report), **env},
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    while not report.exists():
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    return process


@pytest.mark.machine   # a real sshd in a network namespace
def test_ctrl_c_is_the_commands_and_a_hang_up_ends_it_cleanly(operator, rack_a, tmp_path):
    jumphost, port = rack_a
    shell = start_held(operator, jumphost, tmp_path / "shell", ATTACH_TEST_AS_A_SHELL="1")
    os.killpg(shell.pid, signal.SIGINT)          # Ctrl-C at the shell's prompt: attach and the forward stay
    (tmp_path / "shell.go").touch()
    out, err = shell.communicate(timeout=120)
    assert shell.returncode == 0, err
    assert json.loads(out)["nodes_later"] == ["jh-a"]        # the API still answers through the forward
    assert_nothing_left(operator, jumphost, port)
    hung_up = start_held(operator, jumphost, tmp_path / "hangup")
    hung_up.send_signal(signal.SIGHUP)           # the terminal closed: passed on to the command
    hung_up.communicate(timeout=120)
    assert hung_up.returncode == 128 + signal.SIGHUP
    assert_nothing_left(operator, jumphost, port)


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_forward_that_goes_down_is_reported_at_once(operator, rack_a, tmp_path):
    jumphost, port = rack_a
    held = start_held(operator, jumphost, tmp_path / "report")
    [forward] = [pid for pid, cmdline in ssh_processes(jumphost, pids=True) if " -N " in cmdline]
    os.kill(forward, signal.SIGKILL)              # the connection to the jumphost is lost
    while ssh_processes(jumphost):
        time.sleep(0.05)
    (tmp_path / "report.go").touch()
    out, err = held.communicate(timeout=120)
    assert held.returncode == 1                   # the command's next request failed
    assert "rackboot attach: the forward to rack rack-a went down" in err and "Exit and attach again" in err
    assert_nothing_left(operator, jumphost, port)


@pytest.mark.machine   # a real sshd in a network namespace
def test_without_a_command_the_operators_shell_runs(operator, rack_a, tmp_path):
    jumphost, port = rack_a
    shell = tmp_path / "shell"
    shell.write_text('#!/bin/sh\necho "$RACKBOOT_ATTACHED $KUBECONFIG"\nexit 3\n')
    shell.chmod(0o755)
    result = subprocess.run(attach_argv(operator, "rack-a", jumphost)[:-1], stdin=subprocess.DEVNULL,
                            env={**operator["env"], "SHELL": str(shell)}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 3, result.stderr
    rack, config = result.stdout.split()
    assert rack == "rack-a" and config.endswith("/kubeconfig")
    assert f"attached to rack rack-a (KUBECONFIG={config}); exit this shell to detach" in result.stderr
    assert_nothing_left(operator, jumphost, port)


@pytest.mark.machine   # a real sshd in a network namespace
def test_attach_killed_leaves_no_forward_and_the_next_one_cleans_up(operator, rack_a, tmp_path):
    jumphost, port = rack_a
    report = tmp_path / "report"
    killed = start_held(operator, jumphost, report)
    killed.kill()                                 # attach itself, as by kill -9: no clean-up of its own
    killed.wait()
    leftover = Path(json.loads(report.read_text())["kubeconfig"]).parent
    Path(str(report) + ".go").touch()             # its command ends by itself
    while ssh_processes(jumphost):                # the forward dies with attach (PR_SET_PDEATHSIG)
        time.sleep(0.05)
    assert leftover.exists()
    result = attach(operator, "rack-a", jumphost, sys.executable, "-c", CLIENT, "0")
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert_nothing_left(operator, jumphost, port)


# ------------------------------------------------------------ failures: a clear message, nothing left


def failing_attach(operator, jumphost, port, **kwargs):
    result = attach(operator, "rack-a", jumphost, "true", **kwargs)
    assert "Traceback" not in result.stderr
    assert_nothing_left(operator, jumphost, port)
    return result


@pytest.mark.machine   # a real sshd in a network namespace
def test_unreachable_jumphost(operator, jumphosts):
    jumphost = jumphosts("jh-a", k3s=False, sshd=False)
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    result = failing_attach(operator, jumphost, port)
    assert result.returncode == 1
    assert "error: ssh rackboot@jh-a: jh-a refuses ssh connections" in result.stderr
    assert "hint: is the jumphost up and its ssh running?" in result.stderr


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_key_the_jumphost_does_not_accept(operator, jumphosts, tmp_path):
    jumphost = jumphosts("jh-a", k3s=False)
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    keygen(tmp_path / "stranger")
    config = tmp_path / "stranger_config"
    config.write_text(jumphost.ssh_config.read_text().replace(str(jumphost.operator_key), str(tmp_path / "stranger")))
    result = failing_attach(operator, jumphost, port, ssh_config=config)
    assert result.returncode == 1
    assert "error: ssh rackboot@jh-a: rackboot@jh-a refused the login" in result.stderr
    assert "jumphost.ssh_authorized_keys" in result.stderr


@pytest.mark.machine   # a real sshd in a network namespace
def test_an_unknown_host_key_is_not_accepted(operator, jumphosts, tmp_path):
    jumphost = jumphosts("jh-a", k3s=False)
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    config = tmp_path / "fresh_config"
    config.write_text(jumphost.ssh_config.read_text().replace(str(jumphost.root / "operator/known_hosts"),
                                                              str(tmp_path / "empty_known_hosts")))
    result = failing_attach(operator, jumphost, port, ssh_config=config)
    assert result.returncode == 1
    assert "the host key of jh-a is unknown or has changed" in result.stderr and "ssh-keygen -R jh-a" in result.stderr
    assert not (tmp_path / "empty_known_hosts").exists()           # nothing was accepted on our behalf


@pytest.mark.machine   # a real sshd in a network namespace
def test_a_jumphost_without_k3s(operator, jumphosts):
    jumphost = jumphosts("jh-a", k3s=False)
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    result = failing_attach(operator, jumphost, port)
    assert result.returncode == 1
    assert "error: jh-a has no /etc/rancher/k3s/k3s.yaml: k3s has not started there yet" in result.stderr


@pytest.mark.machine   # a real sshd in a network namespace
def test_k3s_stopped_after_writing_its_kubeconfig(operator, jumphosts):
    jumphost = jumphosts("jh-a")
    jumphost.k3s.terminate()
    jumphost.k3s.wait()
    jumphost.processes.remove(jumphost.k3s)
    port = free_port()
    write_rack(operator["profiles"], "rack-a", "jh-a", port)
    result = failing_attach(operator, jumphost, port)
    assert result.returncode == 1
    assert "is up, but nothing answers TLS at 127.0.0.1:6443 there" in result.stderr
    assert "journalctl -u k3s" in result.stderr


@pytest.mark.machine   # a real sshd in a network namespace
def test_the_port_in_use(operator, jumphosts):
    jumphost = jumphosts("jh-a", k3s=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_rack(operator["profiles"], "rack-a", "jh-a", port)
        result = attach(operator, "rack-a", jumphost, "true")
    assert result.returncode == 1 and f"port {port} (k3s.attach_port of rack rack-a) is in use" in result.stderr
    assert_nothing_left(operator, jumphost, port)


# ------------------------------------------------------------ bad input: exit 2 before any ssh


def test_bad_input_is_refused_before_any_ssh(build, tmp_path):
    profiles = tmp_path / "rack-profiles"
    profiles.mkdir()
    (profiles / "defaults.yaml").write_text(DEFAULTS)
    write_rack(profiles, "rack-a", "jh-a", 7001)
    (profiles / "rack-b.yaml").write_text("rack: rack-b\njumphost: {hostname: b}\n")
    cases = [
        (["attach", "nope", "--profiles", str(profiles)], "error: no rack 'nope' in "),
        (["attach", "rack-b", "--profiles", str(profiles)],
         "rack-b.yaml: k3s.attach_port: is needed to attach to rack rack-b"),
        (["attach", "rack-a", "--profiles", str(profiles), "--ssh-config", str(tmp_path / "none")],
         "no such file (--ssh-config)"),
        (["attach", "rack-a", "--profiles", str(tmp_path / "missing")], "missing"),
    ]
    for argv, message in cases:
        result = build(*argv, "--", "true")
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_kubeconfigs_that_are_not_k3s_are_refused_without_showing_a_secret():
    good = {"apiVersion": "v1", "kind": "Config", "current-context": "default",
            "clusters": [{"name": "default", "cluster": {
                "server": "https://127.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(PEM.encode()).decode()}}],
            "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
            "users": [{"name": "default", "user": {"client-key-data": "SECRET-KEY-DATA"}}]}
    text, ca = kubeconfig.for_rack(yaml.safe_dump(good), "rack-a", 7001)
    ours = yaml.safe_load(text)
    assert ours["current-context"] == "rack-a" and ours["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:7001"
    assert ours["users"] == [{"name": "rack-a", "user": {"client-key-data": "SECRET-KEY-DATA"}}]
    assert ca.startswith("-----BEGIN CERTIFICATE-----")

    def broken(change):
        config = json.loads(json.dumps(good))
        change(config)
        return yaml.safe_dump(config)
    for text, message in [
        ("key: [unclosed", "it is not YAML"),
        ("- a list", "it is not a kubeconfig"),
        (broken(lambda c: c["clusters"][0]["cluster"].update({"insecure-skip-tls-verify": True})), "skips TLS"),
        (broken(lambda c: c["clusters"][0]["cluster"].pop("certificate-authority-data")), "no certificate-authority"),
        (broken(lambda c: c["clusters"][0]["cluster"].update({"certificate-authority-data": "!!"})), "no certificate"),
        (broken(lambda c: c.update({"current-context": "other"})), "no context named by its current context"),
        (broken(lambda c: c["users"].clear()), "no user named by its current context"),
        (broken(lambda c: c["users"][0]["user"].update({"exec": {"command": "sh"}})),
         "its user has exec, which attach does not pass on"),
        (broken(lambda c: c["users"][0]["user"].update({"client-key": "/root/.ssh/id_rsa"})), "has client-key,"),
        (broken(lambda c: c["users"][0].update({"user": {}})), "its user has no credentials"),
    ]:
        with pytest.raises(kubeconfig.NotK3sKubeconfig) as caught:
            kubeconfig.for_rack(text, "rack-a", 7001)
        assert message in str(caught.value) and "SECRET" not in str(caught.value)


def test_ssh_runs_with_explicit_options_and_the_host_after_double_dash():
    argv = ssh.argv(ssh.Target("jh-a", config=Path("/x/ssh_config")), "-N", command=["sudo", "-n", "cat", "a b"])
    assert argv[:3] == ["ssh", "-F", "/x/ssh_config"]
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert {"BatchMode=yes", "ControlPath=none", "ForwardAgent=no"} <= set(options)
    assert not any("StrictHostKeyChecking" in o or "UserKnownHostsFile" in o for o in options)
    assert argv[-4:] == ["-N", "--", "jh-a", "sudo -n cat 'a b'"] and argv[argv.index("-l") + 1] == "rackboot"
