#!/usr/bin/env python3
"""Benchmark: push to applied, for a one-manifest change on a running rack (issue 14).

A pretend rack (tests/lib/rack.py: the loopback profile's jumphost with two
Pis, real dnsmasq, the k3s stand-in or real k3s with RACKBOOT_K3S_BUNDLE=DIR,
the Secret Manager double), brought up once by its agent, then reached over
real ssh (tests/lib/ssh_rack.py: Debian's sshd in the jumphost's namespaces,
the agent run by its unit as in the image). Each round changes one
ConfigMap's data in the operator's copy of the profile and runs
`./build.py push loop.yaml --to JUMPHOST --revision N` (a new revision each
round). Prints, median of ROUNDS:

  push to applied     from starting push to the ConfigMap's new value in the
                      API server (polled from the operator's side)
    bundle build      the bundle written (as push does first), in one process
    push returned     push's own process: build, scp, verify and install, the
                      agent's unit restarted up to its READY=1 (after identify)
    then to applied   the rest of the agent's run, up to the object applied
    agent, by step    that agent run's own step times (status.json)
  baselines, in the same run:
    ssh HOST true     one ssh command, with push's ssh options
    agent re-run      no change: `ssh HOST sudo -n systemctl restart
                      rackboot-firstboot.service` to the end of its apply step
and push to applied as a ratio of each. Figures only, no verdict.

Run: sudo ip netns exec NS .venv/bin/python tests/bench/bench_push.py [--rounds N]
     (root: mounts and namespaces; in a network namespace of its own, NS,
     the fixed API port cannot meet another run's; about a minute)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot import bundle  # noqa: E402
from firstboot.profile import load_profiles  # noqa: E402
from image import bundle_build, ssh  # noqa: E402
from tests.doubles.secret_manager import SecretManagerDouble  # noqa: E402
from tests.lib.rack import Rack  # noqa: E402
from tests.lib.ssh_rack import AGENT_UNIT, SshRackJumphost, as_the_image_runs_the_agent  # noqa: E402

RACK = "loop"
JUMPHOST = "jh-loop"          # the operator's ssh name for it
MANIFEST = "kube/50-bench-push.yaml"
STEPS = ("identify", "serve", "token", "k3s", "ready", "apply", "report")
POLL = 0.05                   # seconds between two looks at the API server or status.json
TIMEOUT = 300


def configmap(value: str) -> str:
    return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bench-push, namespace: default}\n"
            f"data: {{change: '{value}'}}\n")


def rack_source(work: Path) -> Path:
    """The loopback rack's profile and manifests, with the ConfigMap each round changes."""
    source = work / "source"
    shutil.copytree(REPO / "tests/profiles/loopback", source)
    (source / MANIFEST).write_text(configmap("initial"))
    return source


class Bench:
    def __init__(self, rack: Rack, jumphost: SshRackJumphost, operator: Path):
        self.rack, self.jumphost = rack, jumphost
        self.profiles = operator / "profiles"           # the operator's checkout: the profile as the rack has it
        shutil.copytree(rack.profiles, self.profiles)
        (operator / "home").mkdir()
        self.env = {**{k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}, "HOME": str(operator / "home")}
        self.target = ssh.Target(JUMPHOST, config=jumphost.ssh_config)
        self.dyn = rack.kube()
        self.configmaps = self.dyn.resources.get(api_version="v1", kind="ConfigMap")
        self.status_file = rack.machine.path("/var/lib/rackboot/status.json")

    def seen_value(self) -> str | None:
        return dict(self.dyn.get(self.configmaps, name="bench-push", namespace="default").data or {}).get("change")

    def status(self) -> dict:
        for _ in range(50):       # written by rename, but a look may meet it missing for a moment
            try:
                return json.loads(self.status_file.read_text())
            except (OSError, ValueError):
                time.sleep(POLL)
        raise SystemExit(f"cannot read the agent's {self.status_file}")

    def wait_for_step(self, name: str, start: float) -> float:
        """Seconds from start until this agent run's step name has finished (done, or fail)."""
        while time.monotonic() - start < TIMEOUT:
            record = self.status()["steps"].get(name, {})
            if record.get("outcome") not in (None, "running"):
                if record["outcome"] != "done":
                    raise SystemExit(f"the agent's {name} step: {record}\n" + self.rack.status_text())
                return time.monotonic() - start
            time.sleep(POLL)
        raise SystemExit(f"the agent's {name} step did not finish in {TIMEOUT} s\n" + self.rack.status_text())

    def over_ssh(self, command: list[str]) -> None:
        subprocess.run(ssh.argv(self.target, "-T", "-o", "ClearAllForwardings=yes", command=command), check=True,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)

    def ssh_true(self) -> float:
        start = time.monotonic()
        self.over_ssh(["true"])
        return time.monotonic() - start

    def agent_rerun(self) -> float:
        """No change: the agent's unit restarted over ssh, to the end of its apply step."""
        start = time.monotonic()
        self.over_ssh(["sudo", "-n", "systemctl", "restart", AGENT_UNIT])
        applied = self.wait_for_step("apply", start)
        self.wait_for_step("report", start)
        return applied

    def bundle_build(self, revision: int) -> float:
        [profile] = load_profiles([self.profiles / f"{RACK}.yaml"])
        with tempfile.TemporaryDirectory(prefix="rackboot-bench-push-") as work:
            start = time.monotonic()
            bundle_build.write(profile, Path(work) / RACK, revision, None)
            return time.monotonic() - start

    def push_round(self, revision: int) -> dict:
        """One changed ConfigMap pushed as revision: the times from push's start."""
        value = f"revision-{revision}"
        (self.profiles / MANIFEST).write_text(configmap(value))
        argv = [sys.executable, str(REPO / "build.py"), "push", str(self.profiles / f"{RACK}.yaml"), "--to", JUMPHOST,
                "--ssh-config", str(self.jumphost.ssh_config), "--revision", str(revision)]
        start = time.monotonic()
        process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        returned = applied = None
        while applied is None or returned is None:
            now = time.monotonic() - start
            if returned is None and process.poll() is not None:
                returned = now
                out, err = process.communicate()
                if process.returncode != 0:
                    raise SystemExit(f"push failed ({process.returncode}):\n{out}{err}\n" + self.jumphost.logs())
            if applied is None and self.seen_value() == value:
                applied = now
            if now > TIMEOUT:
                process.kill()
                raise SystemExit(f"revision {revision} not applied in {TIMEOUT} s\n" + self.rack.status_text())
            time.sleep(POLL)
        self.wait_for_step("report", start)        # this run over before the next round restarts it
        steps = self.status()["steps"]
        return {"applied": applied, "returned": returned, **{name: steps[name]["seconds"] for name in STEPS}}


def median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def row(what: str, seconds: float, ratio_of: float | None = None) -> None:
    print(f"{what:52} {seconds:6.2f} s" + (f"   push to applied: {ratio_of / seconds:5.1f}x" if ratio_of else ""))


def report(rounds: list[dict], builds: list[float], ssh_true: float, rerun: float) -> None:
    for r in rounds:
        r["after_return"] = r["applied"] - r["returned"]
    applied = median(rounds, "applied")
    print(f"one ConfigMap changed, pushed to a running rack over ssh; median of {len(rounds)} rounds, "
          "each a new revision")
    row("push to applied (the new value in the API server)", applied)
    row("  bundle build (in one process)", statistics.median(builds))
    row("  push returned (build, scp, install, to READY=1)", median(rounds, "returned"))
    row("  then to applied (the agent's run after READY=1)", median(rounds, "after_return"))
    print("  that agent run, by step: " + ", ".join(f"{name} {median(rounds, name):.1f} s" for name in STEPS))
    print("baselines, same run:")
    row("  ssh HOST true", ssh_true, applied)
    row("  agent re-run, no change, to its apply's end", rerun, applied)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pushes (and baseline runs) to take the median of")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    with tempfile.TemporaryDirectory(prefix="rackboot-bench-push-") as work:
        work = Path(work)
        sm = SecretManagerDouble()
        sm.add("rackboot-loop", "k3s-node-token", b"rackboot-bench-push-token")
        rack = jumphost = None
        try:
            rack = Rack(work / "rack", rack_source(work), RACK, sm.start())
            first = rack.agent()
            if first.returncode != 0:
                raise SystemExit("the rack's first agent run failed:\n" + first.stderr + rack.status_text())
            as_the_image_runs_the_agent(rack)
            jumphost = SshRackJumphost(work / "ssh", JUMPHOST, rack.machine)
            jumphost.start_sshd()
            bench = Bench(rack, jumphost, work / "operator")
            baked = rack.machine.path(f"/usr/share/rackboot/racks/{RACK}")    # the image's: unsealed here
            baked = bundle.verify(baked).revision if (baked / bundle.META).exists() else bundle.UNSEALED
            ssh_true = statistics.median(bench.ssh_true() for _ in range(args.rounds))
            rerun = statistics.median(bench.agent_rerun() for _ in range(args.rounds))
            revisions = [max(baked, 0) + 1 + n for n in range(args.rounds)]
            builds = [bench.bundle_build(revision) for revision in revisions]
            rounds = [bench.push_round(revision) for revision in revisions]
        finally:
            if jumphost is not None:
                jumphost.destroy()
            if rack is not None:
                rack.destroy()
            sm.stop()
    report(rounds, builds, ssh_true, rerun)


if __name__ == "__main__":
    main()
