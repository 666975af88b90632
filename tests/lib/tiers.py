"""The test tiers: which tier a test is in, whether a tier can run here, and
the rule that under CI a skipped test is a failure (tests/conftest.py's hooks
call these).

- pure: no root, no namespaces: the profile model, rendering, the command
  line's refusals, the doubles, the agent's steps in process;
- machine: root, mount and network namespaces: pretend machines
  (tests/lib/machine.py, tests/lib/rack.py), real dnsmasq, exportfs, squashfs mounts;
- vm: image builds and QEMU boots.

A test's tier is its marker if it has one (`@pytest.mark.machine`, or
`pytestmark = pytest.mark.vm` for a whole file). Without one it is vm if it
uses an image fixture, machine if it or a fixture of its own file builds a
pretend machine, and pure otherwise. A marker below what the test uses, or
two markers, fail collection; so does a pure test that starts a pretend
machine when it runs. Like osbuild's `can_bind_mount`, each tier has a probe:
a tier the probe finds impossible here is skipped with the probe's reason.
"""

import functools
import inspect
import os
import shutil
import subprocess
import types

import pytest

TIERS = ("pure", "machine", "vm")     # each needs what the one before it does, and more
# Shared fixtures (tests/conftest.py) that put a test in a tier. A test file's
# own fixtures are read instead (uses_pretend_machine).
SHARED_FIXTURE_TIERS = {"example_image": "vm", "replacement_sdcard": "vm"}
# What a test or fixture names when it builds a pretend machine (matched by
# name, so that collecting needs no import of the product).
PRETEND_MACHINES = frozenset({"tests.lib.machine", "tests.lib.machine.Machine", "tests.lib.rack", "tests.lib.rack.Rack"})
MACHINE_TOOLS = ("unshare", "nsenter", "mount", "umount", "findmnt", "ip", "dnsmasq", "exportfs", "mksquashfs")
VM_TOOLS = ("mmdebstrap", "genimage", "qemu-system-x86_64", "qemu-system-aarch64", "bmaptool",
            "sfdisk", "debugfs", "mcopy", "unsquashfs", "ssh")
TIER = pytest.StashKey[str]()


class TierError(Exception):
    pass


def assign(items: list[pytest.Item]) -> None:
    """Mark every item with its one tier (also as a marker, for -m); a test
    whose tier cannot be decided fails collection, naming each such test."""
    problems = []
    for item in items:
        try:
            tier = tier_of(item)
        except TierError as err:
            problems.append(f"{item.nodeid}: {err}")
            continue
        item.stash[TIER] = tier
        if not any(item.iter_markers(tier)):
            item.add_marker(tier)
    if problems:
        raise pytest.UsageError("tests without one tier (tests/lib/tiers.py):\n" + "\n".join(problems))


def tier_of(item: pytest.Item) -> str:
    marked = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS}, key=TIERS.index)
    if len(marked) > 1:
        raise TierError(f"marked {' and '.join(marked)}: a test is in one tier")
    used = tier_used(item)
    if marked and TIERS.index(marked[0]) < TIERS.index(used):
        raise TierError(f"marked {marked[0]} but it uses the {used} tier ({_why(item, used)})")
    return marked[0] if marked else used


def tier_used(item: pytest.Item) -> str:
    shared = [SHARED_FIXTURE_TIERS[name] for name in item.fixturenames if name in SHARED_FIXTURE_TIERS]
    if shared:
        return max(shared, key=TIERS.index)
    return "machine" if _pretend_machine_builders(item) else "pure"


def _why(item: pytest.Item, tier: str) -> str:
    if tier == "machine":
        return "builds a pretend machine in " + ", ".join(_pretend_machine_builders(item))
    return "uses " + ", ".join(n for n in item.fixturenames if SHARED_FIXTURE_TIERS.get(n) == tier)


def _pretend_machine_builders(item: pytest.Item) -> list[str]:
    """The test function and the fixtures of its own file that name a pretend machine."""
    module = getattr(item, "module", None)
    functions = {item.name: getattr(item, "obj", None)}
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        for definition in definitions:
            if module is not None and getattr(definition.func, "__module__", None) == module.__name__:
                functions[f"fixture {name}"] = definition.func
    return [name for name, function in functions.items() if function and uses_pretend_machine(function)]


def uses_pretend_machine(function) -> bool:
    """Whether the function's code (nested functions included) names
    tests.lib.machine, tests.lib.rack or their Machine and Rack."""
    function = inspect.unwrap(function)
    code, namespace = getattr(function, "__code__", None), getattr(function, "__globals__", {})
    names, pending = set(), [code] if code else []
    while pending:
        code = pending.pop()
        names.update(code.co_names)
        pending.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    return any(_qualified_name(namespace.get(name)) in PRETEND_MACHINES for name in names)


def _qualified_name(thing) -> str | None:
    if isinstance(thing, types.ModuleType):
        return thing.__name__
    if isinstance(thing, type):
        return f"{thing.__module__}.{thing.__qualname__}"
    return None


def refuse_pretend_machine(*args, **kwargs):
    raise AssertionError("a pure-tier test started a pretend machine: mark it @pytest.mark.machine "
                         "(tests/lib/tiers.py)")


# ---------------------------------------------------------------- probes

@functools.cache
def cannot_run(tier: str) -> str | None:
    """Why the tier cannot run on this host, or None if it can."""
    return PROBES[tier]()


def _pure() -> None:
    # Pure tests need only what tests/run installs for every tier: a missing
    # tool there fails them rather than hiding the tier.
    return None


def _machine() -> str | None:
    if os.geteuid() != 0:
        return "not root (machine-tier tests use namespaces and mounts and set owners)"
    missing = _missing_tool(MACHINE_TOOLS)
    if missing:
        return missing
    for flags in (["--mount", "--propagation", "private"], ["--net"], ["--cgroup"]):
        result = subprocess.run(["unshare", *flags, "true"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            return f"`unshare {' '.join(flags)}` fails here: {result.stderr.strip() or result.returncode}"
    return _machine_cgroups() or _machine_bridges()


def _machine_cgroups() -> str | None:
    """Each pretend machine lives in a cgroup2 subtree of its own (tests/lib/machine_cgroup.py)."""
    from tests.lib import machine_cgroup
    try:
        machine_cgroup.hierarchy()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"no cgroup2 hierarchy here (pretend machines need one): {getattr(err, 'stderr', None) or err}"
    return None


def _machine_bridges() -> str | None:
    """Each pretend rack's machines are cabled to a bridge (tests/lib/rack_net.py)."""
    name = f"rbt-probe{os.getpid() % 100000}"
    result = subprocess.run(["ip", "link", "add", name, "type", "bridge"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"`ip link add NAME type bridge` fails here (pretend racks need bridges): {result.stderr.strip()}"
    subprocess.run(["ip", "link", "del", name], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return None


def _vm() -> str | None:
    from image import qemu
    if os.geteuid() != 0:
        return "not root (building an image needs mmdebstrap in root mode and an owner-preserving unpack)"
    missing = _missing_tool(VM_TOOLS)
    if missing:
        return missing
    if not qemu.OVMF_CODE.exists():
        return f"OVMF firmware is not installed ({qemu.OVMF_CODE}; tests/run installs it)"
    return None


def _missing_tool(tools) -> str | None:
    for tool in tools:
        if not shutil.which(tool):
            return f"{tool} is not installed (tests/run installs it)"
    return None


PROBES = {"pure": _pure, "machine": _machine, "vm": _vm}


def skip_what_cannot_run(items: list[pytest.Item]) -> None:
    for item in items:
        if TIER not in item.stash:      # collection failed (assign raised)
            continue
        reason = cannot_run(item.stash[TIER])
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"{item.stash[TIER]} tier cannot run here: {reason}"))


def summary(items: list[pytest.Item]) -> str:
    """One line: how many of the selected tests each tier has, and why a tier
    cannot run here."""
    if any(TIER not in item.stash for item in items):
        return "tiers: some tests have no tier (the error follows)"
    parts = []
    for tier in TIERS:
        count = sum(1 for item in items if item.stash.get(TIER, None) == tier)
        if count:
            reason = cannot_run(tier)
            parts.append(f"{tier} {count}" + (f" (skipped: {reason})" if reason else ""))
    return "tiers: " + (", ".join(parts) or "none selected")


# ---------------------------------------------------------------- CI

def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


class CiRule:
    """Under CI (CI=true) a skipped test fails the run: a tier that cannot
    run there would otherwise pass in silence. Registered by tests/conftest.py."""

    def __init__(self):
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append((report.nodeid, skip_reason(report)))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if under_ci() and self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not (under_ci() and self.skipped):
            return
        terminalreporter.write_sep("=", f"CI=true: {len(self.skipped)} skipped, and under CI a skip is a failure",
                                   red=True, bold=True)
        reasons: dict[str, int] = {}
        for _, reason in self.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            terminalreporter.write_line(f"{count} skipped: {reason}")
        terminalreporter.write_line("Run where every selected tier can run (root, and what tests/run installs), "
                                    "or select fewer tiers with -m.")


def runnable(items: list[pytest.Item]) -> set[str]:
    """The tiers of the selected items that can run here."""
    return {item.stash[TIER] for item in items if TIER in item.stash and not cannot_run(item.stash[TIER])}
