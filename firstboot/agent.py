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

The steps are one table (STEPS): each names the roles it is for, and on a
machine of another role the runner records it as done with the reason it
does not apply, without calling it. Steps hand results to later ones on the
Context, typed; the status file is only their record.
"""

import logging
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from firstboot import (apply, bundle, host_keys, identify, join, k3s, k3s_ca_expiry, k3s_follow, k3s_store, metrics, nodes,
                       pi_bundle, rack_model, ready, report, serve, state, token)
from firstboot.errors import RackbootError
from firstboot.layout import Layout, Role
from firstboot.profile import RackProfile

log = logging.getLogger("rackboot.agent")
CMDLINE = Path("/proc/cmdline")     # the kernel's, read by the jumphost and the Pi alike


@dataclass
class Context:
    layout: Layout
    role: Role
    status: dict                                  # what the status file records (JSON)
    journal: object = None                        # systemd.journal, when the machine has it
    identity: identify.Identity | None = None
    token_changed: bool = False                   # the token step's: k3s restarts when it changed
    inventory: tuple = ()                         # apply's kinds applied, pruned through next time
    served_bundle: str | None = None              # the bundle digest the last serve step served
    k3s_version: str | None = None                # the k3s step's: what the jumphost serves once ready

    @property
    def profile(self) -> RackProfile | None:
        """The rack's profile, once identified."""
        return self.identity.profile if self.identity else None


@dataclass(frozen=True)
class Step:
    name: str
    function: Callable[[Context], dict]
    roles: frozenset[Role] = frozenset(Role)
    not_for_others: str = ""          # the recorded reason on a machine of another role


def _journal(ctx: Context, message: str, **fields) -> None:
    log.info("%s", message)
    if ctx.journal is not None:
        extra = {f"RACKBOOT_{k.upper()}": str(v) for k, v in fields.items() if v is not None}
        if ctx.identity:
            extra.update(RACKBOOT_RACK=ctx.identity.rack, RACKBOOT_ROLE=str(ctx.identity.role))
        ctx.journal.send(message, SYSLOG_IDENTIFIER="rackboot-firstboot", **extra)


def _notify(text: str) -> None:
    try:
        from systemd import daemon
    except ImportError:
        return
    daemon.notify(text)


def step_identify(ctx: Context) -> dict:
    cmdline = CMDLINE.read_text()
    if ctx.role is Role.PI:      # the rack's bundle in use on its jumphost: a pushed one may name this Pi
        pi_bundle.refresh(ctx.layout, cmdline, join.FETCH_TIMEOUT)
    ctx.layout, bundles = bundle.choose_all(ctx.layout)    # each rack's newest verified bundle
    profiles = rack_model.read_all(ctx.layout)
    if ctx.role is Role.JUMPHOST:
        ctx.identity = identify.identify_jumphost(profiles, cmdline, identify.rack_from_seed())
    else:
        ctx.identity = identify.identify_pi(profiles, identify.pi_serial(), identify.NetworkView.read().macs,
                                            identify.rack_from_cmdline(cmdline))
    used = bundles.get(ctx.identity.rack)     # the status file says which (bundle install reads it)
    ctx.status["bundle"] = used and {"rack": used.rack, "revision": used.revision, "digest": used.digest}
    return ctx.identity.to_json()


def rack_profile(layout: Layout, rack: str) -> RackProfile:
    """The profile of a rack named on the command line (the join service's --rack)."""
    return identify.profile_named(rack_model.read_all(layout), rack, "--rack option")


def step_serve(ctx: Context) -> dict:
    in_use = (ctx.status.get("bundle") or {}).get("digest")
    return serve.serve(ctx.layout, ctx.profile, in_use, ctx.served_bundle)


def step_token(ctx: Context) -> dict:
    if ctx.role is Role.PI:
        result = token.install_pi_token(ctx.profile, ctx.layout.token_file)
    else:
        # A k3s server that already has a datastore cannot simply take a new token.
        result = token.install_token(ctx.profile.k3s.token, ctx.profile.rack, ctx.layout.token_file,
                                     datastore=ctx.layout.datastore,
                                     agent_token_file=ctx.layout.agent_token_file)
        # The join service hands the Pis host keys derived from it (firstboot/host_keys.py).
        host_keys.install_secret(ctx.layout.token_file, ctx.profile.rack, ctx.layout.ssh_host_key_secret)
    ctx.token_changed = result["changed"]
    return result


def step_k3s(ctx: Context) -> dict:
    version = ctx.profile.k3s.version
    if ctx.role is Role.PI:       # the Pis follow their server (firstboot/k3s_follow.py)
        version = k3s_follow.version_to_run(ctx.layout, ctx.profile, version, join.FETCH_TIMEOUT)
    result = k3s.install(ctx.layout, ctx.identity.rack, ctx.role, ctx.identity.node, version,
                         token_changed=ctx.token_changed)
    if ctx.role is Role.PI:       # where the Pis' watcher asks whether the server moved on (k3s_follow.behind)
        result["follows"] = k3s_follow.base_url(ctx.profile)
    ctx.k3s_version = result["version"]
    return result


def step_ready(ctx: Context) -> dict:
    result = ready.wait(ctx.layout, ctx.role, ctx.identity.node)
    if ctx.role is Role.JUMPHOST:     # now its Pis may run this version too
        k3s_store.record_served(ctx.layout, ctx.k3s_version)
        result.update(k3s_ca_expiry.check(ctx.layout))
    return result


def step_apply(ctx: Context) -> dict:
    result = apply.apply(ctx.layout.kubeconfig, ctx.profile, ctx.inventory)
    ctx.inventory = tuple(map(tuple, result["inventory"]))
    ctx.status["inventory"] = result["inventory"]   # what to look through when pruning next time
    result["nodes_removed"] = nodes.remove_departed_pis(ctx.layout.kubeconfig, ctx.profile)
    return result


def step_report(ctx: Context) -> dict:
    summary = {
        "identity": ctx.identity.to_json() if ctx.identity else None,
        "hostname": socket.gethostname(),
        "cloud_init": report.cloud_init(),
        # Seconds since the kernel started: when cloud-init finished, and now (the rack is
        # ready when every step before this one is done).
        "uptime": {"cloud_init_finished": report.cloud_init_finished_uptime(), "report": report.uptime()},
        "failed_units": [u for u in report.failed_units() if u != "rackboot-firstboot.service"],
        "ssh_host_keys": report.ssh_host_keys(),
        "steps": {step.name: ctx.status["steps"].get(step.name, {}).get("outcome", "skipped")
                  for step in STEPS[:-1]},
        "errors": {name: record["error"] for name, record in ctx.status["steps"].items()
                   if name != "report" and record.get("error")},
    }
    summary["sent_to_port"] = report.send(summary)
    return summary


STEPS = (
    Step("identify", step_identify),
    Step("serve", step_serve, frozenset({Role.JUMPHOST}), "the jumphost serves the Pis' network boot"),
    Step("token", step_token),
    Step("k3s", step_k3s),
    Step("ready", step_ready),
    Step("apply", step_apply, frozenset({Role.JUMPHOST}), "the jumphost applies the rack's YAML"),
    Step("report", step_report),
)


def _run_step(ctx: Context, step: Step, record: dict) -> int:
    """Run one step into its record; its exit status (0: done)."""
    if ctx.role not in step.roles:
        record.update(outcome="done", result={"skipped": step.not_for_others})
        return 0
    try:
        record["result"] = step.function(ctx)
        record["outcome"] = "done"
        return 0
    except RackbootError as err:
        record.update(outcome="failed", error=str(err), hint=err.hint)
        return err.exit_status
    except Exception as err:  # an agent bug: keep the traceback where status can show it
        record.update(outcome="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        return 1


def run(role: Role | str, layout: Layout | None = None) -> int:
    try:
        from systemd import journal
    except ImportError:
        journal = None
    layout = layout or Layout.from_environment()
    ctx = Context(layout, Role(role), state.load(layout), journal)
    ctx.inventory = tuple(map(tuple, ctx.status.get("inventory", ())))
    ctx.served_bundle = ((ctx.status.get("steps") or {}).get("serve", {}).get("result") or {}).get("bundle")
    ctx.status.update(role=str(ctx.role), started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), failed=None)
    ctx.status["steps"] = {}
    failure = 0
    for step in STEPS:
        if failure and step.name != "report":
            continue
        _notify(f"STATUS={step.name}...")
        record = ctx.status["steps"][step.name] = {"outcome": "running"}
        state.save(layout, ctx.status)
        start = time.monotonic()
        exit_status = _run_step(ctx, step, record)
        if exit_status:
            ctx.status["failed"] = ctx.status["failed"] or step.name   # the first failure is the cause
        record["seconds"] = round(time.monotonic() - start, 1)
        state.save(layout, ctx.status)
        _journal(ctx, f"step {step.name}: {record['outcome']} in {record['seconds']} s"
                 + (f": {record['error']}" if record.get("error") else ""),
                 step=step.name, outcome=record["outcome"], duration=record["seconds"])
        if step.name == "identify" and ctx.identity:
            _notify("READY=1")  # boot goes on; the remaining steps run in the background
        if exit_status and not failure:
            _notify(f"STATUS=failed at {step.name}: {record['error'].splitlines()[0]}")
            failure = exit_status
    metrics.write(layout, ctx.status, ctx.identity.rack if ctx.identity else None)
    if failure:
        return failure
    _notify("STATUS=done")
    return 0


def describe_status(layout: Layout | None = None) -> str:
    layout = layout or Layout.from_environment()
    status = state.load(layout)
    if not status.get("steps"):
        return f"no first-boot run recorded yet ({state.status_path(layout)})"
    lines = [f"role {status.get('role')}, last run started {status.get('started')}"]
    if status.get("bundle"):
        lines.append("rack bundle in use: {rack} revision {revision} ({digest})".format(**status["bundle"]))
    for step in STEPS:
        record = status["steps"].get(step.name)
        if not record:
            lines.append(f"  {step.name:10} not reached")
            continue
        lines.append(f"  {step.name:10} {record['outcome']}"
                     + (f" ({record['seconds']} s)" if "seconds" in record else ""))
        if record.get("error"):
            lines.append(f"             error: {record['error']}")
        if (record.get("result") or {}).get("warning"):
            lines.append(f"             warning: {record['result']['warning']}")
        if record.get("hint"):
            lines.append(f"             hint: {record['hint']}")
    if status.get("failed"):
        lines.append(f"failed at step {status['failed']}; logs: journalctl -u rackboot-firstboot")
    return "\n".join(lines)
