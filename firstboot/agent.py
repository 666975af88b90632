"""The first-boot agent's steps, in order, each recorded in the status file.

    identify -> serve -> token -> k3s -> ready -> apply -> report

serve (the jumphost's netboot service for its Pis) comes before the token:
Pis boot even while the secret store is out of reach.

The unit runs them at every boot, and every step converges: it compares what
is there with what should be and changes only the difference. So a power cut
in any step means the next boot's run does it again and goes on, and a run on
a finished machine changes nothing unless an input changed (a new bundle, a
rotated token, a new profile). When a step fails the rest are skipped, but
report always runs, so the failure reaches the operator.
"""

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from firstboot import apply, identify, k3s, ready, report, serve, state, token
from firstboot.errors import BadInput, RackbootError
from firstboot.profile import load_profiles

log = logging.getLogger("rackboot.agent")
PROFILES = Path(os.environ.get("RACKBOOT_PROFILES", Path(__file__).resolve().parent.parent / "rack-profiles"))
STEPS = ("identify", "serve", "token", "k3s", "ready", "apply", "report")


@dataclass
class Context:
    role: str
    status: dict
    identity: identify.Identity | None = None
    profile: object = None          # the rack's RackProfile, once identified
    journal: object = None
    notes: dict = field(default_factory=dict)


def _journal(ctx: Context, message: str, **fields) -> None:
    log.info("%s", message)
    if ctx.journal is not None:
        extra = {f"RACKBOOT_{k.upper()}": str(v) for k, v in fields.items() if v is not None}
        if ctx.identity:
            extra.update(RACKBOOT_RACK=ctx.identity.rack, RACKBOOT_ROLE=ctx.identity.role)
        ctx.journal.send(message, SYSLOG_IDENTIFIER="rackboot-firstboot", **extra)


def _notify(text: str) -> None:
    try:
        from systemd import daemon
    except ImportError:
        return
    daemon.notify(text)


def step_identify(ctx: Context) -> dict:
    profiles = load_profiles([PROFILES])
    if ctx.role == "jumphost":
        cmdline = Path("/proc/cmdline").read_text()
        ctx.identity = identify.identify_jumphost(profiles, cmdline, identify.rack_from_seed())
    else:
        ctx.identity = identify.identify_pi(profiles, identify.pi_serial(), identify.NetworkView.read().macs)
    ctx.profile = next(p for p in profiles if p.rack == ctx.identity.rack)
    return ctx.identity.to_json()


def rack_profile(rack: str):
    for profile in load_profiles([PROFILES]):
        if profile.rack == rack:
            return profile
    raise BadInput(f"no rack {rack!r} among the profiles in {PROFILES}")


def step_serve(ctx: Context) -> dict:
    if ctx.role != "jumphost":
        return {"skipped": "the jumphost serves the Pis' network boot"}
    return serve.serve(ctx.profile)


def step_token(ctx: Context) -> dict:
    if ctx.role == "pi":
        return token.install_pi_token(ctx.profile)
    # A k3s server that already has a datastore cannot simply take a new token.
    return token.install_token(ctx.profile.k3s.token, ctx.profile.rack, datastore=k3s.DATASTORE)


def step_k3s(ctx: Context) -> dict:
    return k3s.install(ctx.identity.rack, ctx.role, ctx.identity.node, ctx.profile.k3s.version,
                       token_changed=ctx.status["steps"]["token"]["result"]["changed"])


def step_ready(ctx: Context) -> dict:
    return ready.wait(ctx.role, ctx.identity.node)


def step_apply(ctx: Context) -> dict:
    if ctx.role != "jumphost":
        return {"skipped": "the jumphost applies the rack's YAML"}
    result = apply.apply(ctx.profile, ctx.status.get("inventory", ()))
    ctx.status["inventory"] = result["inventory"]   # what to look through when pruning next time
    return result


def step_report(ctx: Context) -> dict:
    summary = {
        "identity": ctx.identity.to_json() if ctx.identity else None,
        "cloud_init": report.cloud_init(),
        # Seconds since the kernel started: when cloud-init finished, and now (the rack is
        # ready when every step before this one is done).
        "uptime": {"cloud_init_finished": report.cloud_init_finished_uptime(), "report": report.uptime()},
        "failed_units": [u for u in report.failed_units() if u != "rackboot-firstboot.service"],
        "ssh_host_keys": report.ssh_host_keys(),
        "steps": {name: ctx.status["steps"].get(name, {}).get("outcome", "skipped") for name in STEPS[:-1]},
        "errors": {name: record["error"] for name, record in ctx.status["steps"].items()
                   if name != "report" and record.get("error")},
    }
    summary["sent_to_port"] = report.send(summary)
    return summary


STEP_FUNCTIONS = {"identify": step_identify, "serve": step_serve, "token": step_token, "k3s": step_k3s, "ready": step_ready,
                  "apply": step_apply, "report": step_report}


def run(role: str) -> int:
    try:
        from systemd import journal
    except ImportError:
        journal = None
    ctx = Context(role=role, status=state.load(), journal=journal)
    ctx.status.update(role=role, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), failed=None)
    ctx.status["steps"] = {}
    failure = 0
    for name in STEPS:
        if failure and name != "report":
            continue
        _notify(f"STATUS={name}...")
        record = {"outcome": "running"}
        ctx.status["steps"][name] = record
        state.save(ctx.status)
        start = time.monotonic()
        exit_status = 0
        try:
            record["result"] = STEP_FUNCTIONS[name](ctx)
            record["outcome"] = "done"
        except RackbootError as err:
            record.update(outcome="failed", error=str(err), hint=err.hint)
            exit_status = err.exit_status
        except Exception as err:  # an agent bug: keep the traceback where status can show it
            record.update(outcome="failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc())
            exit_status = 1
        if exit_status:
            ctx.status["failed"] = ctx.status["failed"] or name   # the first failure is the cause
        record["seconds"] = round(time.monotonic() - start, 1)
        state.save(ctx.status)
        _journal(ctx, f"step {name}: {record['outcome']} in {record['seconds']} s"
                 + (f": {record['error']}" if record.get("error") else ""),
                 step=name, outcome=record["outcome"], duration=record["seconds"])
        if name == "identify" and ctx.identity:
            _notify("READY=1")  # boot goes on; the remaining steps run in the background
        if record["outcome"] == "failed" and not failure:
            _notify(f"STATUS=failed at {name}: {record['error'].splitlines()[0]}")
            failure = exit_status
    if failure:
        return failure
    _notify("STATUS=done")
    return 0


def describe_status() -> str:
    status = state.load()
    if not status.get("steps"):
        return f"no first-boot run recorded yet ({state.status_path()})"
    lines = [f"role {status.get('role')}, last run started {status.get('started')}"]
    for name in STEPS:
        record = status["steps"].get(name)
        if not record:
            lines.append(f"  {name:10} not reached")
            continue
        lines.append(f"  {name:10} {record['outcome']}" + (f" ({record['seconds']} s)" if "seconds" in record else ""))
        if record.get("error"):
            lines.append(f"             error: {record['error']}")
        if record.get("hint"):
            lines.append(f"             hint: {record['hint']}")
    if status.get("failed"):
        lines.append(f"failed at step {status['failed']}; logs: journalctl -u rackboot-firstboot")
    return "\n".join(lines)
