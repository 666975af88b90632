"""k3s upgraded in place on the virtual rack (issue 15): the next minor's
bundle (the stand-in's next minor) pushed to the running jumphost with the rack's bundle, as an operator
does (`build.py push PROFILE --to HOST --k3s-bundle DIR`); the jumphost's
agent upgrades its k3s server keeping the datastore, and each running Pi's
watcher sees that the server moved on and runs its agent again, which fetches
the served version from the join service and installs it (firstboot/
k3s_follow.py). Call upgrade_k3s while the jumphost runs with its Pis joined
(chained after the swap: tests/lib/vm_swap.py's then=). It returns what the
test asserts:

  seconds          from the push to every Node Ready on the new version (printed)
  version          the version moved to
  pushed, status   push's output; the jumphost agent's status after its run
  before, after    Node name -> (Ready, kubeletVersion, uid, bootID): the same uids
                   (the same datastore), the same bootIDs (nothing rebooted)
  kept             the uid of a ConfigMap made before the push, before and after
  pis_running      each Pi's QEMU still the one started before
  pi_watch         each Pi's console lines of its watcher after the push

With RACKBOOT_K3S_BUNDLE (real k3s) the next version comes from
RACKBOOT_K3S_UPGRADE_BUNDLE; without it, {"skipped": why}.
"""

import json
import os
import time
from pathlib import Path

import yaml

from tests.doubles import k3s_standin_bundle
from tests.lib import vm, vm_push
from tests.lib.rack import UPGRADE_BUNDLE_ENV

UPGRADE_TIMEOUT = 900             # push to every Node on the new version, under TCG


def next_bundle(work: Path, running: str) -> Path | None:
    real = os.environ.get(UPGRADE_BUNDLE_ENV)
    if real:
        return Path(real)
    if k3s_standin_bundle.real_bundle():
        return None
    return k3s_standin_bundle.make(work, k3s_standin_bundle.next_minor(running))


def nodes(rack) -> dict:
    """name -> (Ready, kubeletVersion, uid, bootID); {} while the API does not answer."""
    try:
        dyn = vm.api_client(rack.ssh, rack.api_port)
        found = dyn.get(dyn.resources.get(api_version="v1", kind="Node")).items
    except Exception:      # k3s restarting: the API is away for a while
        return {}
    return {n.metadata.name: (next((c.status for c in n.status.conditions if c.type == "Ready"), None),
                              n.status.nodeInfo.kubeletVersion, n.metadata.uid, n.status.nodeInfo.bootID)
            for n in found}


def _make_kept(rack) -> str:
    dyn = vm.api_client(rack.ssh, rack.api_port)
    maps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    made = dyn.create(maps, namespace="default", body={"apiVersion": "v1", "kind": "ConfigMap",
                                                       "metadata": {"name": "made-before-the-upgrade"},
                                                       "data": {"kept": "yes"}})
    return made.metadata.uid


def _kept_uid(rack) -> str | None:
    dyn = vm.api_client(rack.ssh, rack.api_port)
    maps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    return dyn.get(maps, name="made-before-the-upgrade", namespace="default").metadata.uid


def _profile_at(source: Path, target: Path, version: str) -> Path:
    """A copy of source's profiles directory with the profile's k3s.version set."""
    profile = vm_push.profiles_with(source, target, [])
    document = yaml.safe_load(profile.read_text())
    document.setdefault("k3s", {})["version"] = version
    profile.write_text(yaml.safe_dump(document, sort_keys=False))
    return profile


def _all_on(rack, version: str, names: list[str], deadline: float) -> dict:
    while True:
        found = nodes(rack)
        if names and all(found.get(n, (None, None))[:2] == ("True", version) for n in names):
            return found
        assert time.monotonic() < deadline, f"not every Node Ready on {version} within {UPGRADE_TIMEOUT} s: {found}"
        time.sleep(5)


def upgrade_k3s(rack, pis: dict, profile_source: Path, work: Path, revision: int) -> dict:
    """pis: node name -> the running PiVM; profile_source: the rack's profile
    as the image was built from it; revision: the pushed bundle's."""
    found = nodes(rack)
    assert found, "the swapped-in jumphost's API does not answer"
    bundle = next_bundle(work / "k3s", found["jumphost-example"][1])
    if bundle is None:
        return {"skipped": f"real k3s needs {UPGRADE_BUNDLE_ENV}=DIR of the next minor"}
    version = json.loads((bundle / "bundle.json").read_text())["version"]
    machines = list(pis.values())
    seen = {"version": version, "before": nodes(rack), "kept": [_make_kept(rack)]}
    pids = [pi.process.pid for pi in machines]
    console_at = [pi.files.serial_log.stat().st_size for pi in machines]
    host, config = vm_push.ssh_config(rack, work / "ssh_config")
    started = time.monotonic()
    pushed = vm_push.push(_profile_at(profile_source, work / "profiles", version), host, config, revision,
                          "--k3s-bundle", str(bundle))
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    seen["pushed"] = pushed.stdout
    seen["status"] = vm_push.agent_done(rack, revision)
    seen["after"] = _all_on(rack, version, list(seen["before"]), started + UPGRADE_TIMEOUT)
    seen["seconds"] = round(time.monotonic() - started)
    print(f"k3s upgrade in place to {version}: every Node Ready on it {seen['seconds']} s after the push began")
    seen["kept"].append(_kept_uid(rack))
    seen["pis_running"] = [pi.process.poll() is None and pi.process.pid == pid for pi, pid in zip(machines, pids)]
    consoles = [pi.files.serial_log.read_bytes()[at:].decode(errors="replace") for pi, at in zip(machines, console_at)]
    seen["pi_watch"] = {name: [line for line in text.splitlines() if "pi-watch:" in line]
                        for name, text in zip(pis, consoles)}
    return seen
