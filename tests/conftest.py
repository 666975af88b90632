import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.lib import machine  # noqa: E402
from tests.lib import tiers  # noqa: E402


def run_build(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run build.py as a user would (inside the venv, so no re-bootstrap)."""
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------- tiers (tests/lib/tiers.py)

def pytest_configure(config):
    config.pluginmanager.register(tiers.CiRule(), "rackboot-ci-rule")


@pytest.hookimpl(tryfirst=True)     # before -m selects by the tier markers this adds
def pytest_collection_modifyitems(items):
    tiers.assign(items)


def pytest_collection_finish(session):
    tiers.skip_what_cannot_run(session.items)


def pytest_report_collectionfinish(items):
    return tiers.summary(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    # A pure test that builds a pretend machine out of the tier rules' sight
    # (in a helper) fails here, naming the marker, rather than passing as
    # root and failing only where the pure tier runs without root.
    if item.stash.get(tiers.TIER, None) != "pure":
        return (yield)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(machine.Machine, "__init__", tiers.refuse_pretend_machine)
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def _reap_orphaned_machines(request):
    """Pretend machines left running by a killed test run would hold the ports
    this run needs (tests/lib/machine.py)."""
    if "machine" in tiers.runnable(request.session.items):
        reaped = machine.reap_orphans()
        if reaped:
            print(f"reaped {len(reaped)} pretend machines of an earlier, killed test run", file=sys.stderr)
    yield


@pytest.fixture
def build():
    return run_build


# ---------------------------------------------------------------- VM tier

EXAMPLE_PROFILE = REPO / "rack-profiles" / "example.yaml"


@pytest.fixture(scope="session")
def example_k3s_bundle(tmp_path_factory) -> Path:
    """The k3s bundle the VM tests build into images: the real one named by
    RACKBOOT_K3S_BUNDLE, or else the stand-in's, at the example's version."""
    from firstboot.profile import load_profiles
    from tests.doubles import k3s_standin_bundle
    [profile] = load_profiles([EXAMPLE_PROFILE])
    return k3s_standin_bundle.real_bundle() or k3s_standin_bundle.make(
        tmp_path_factory.mktemp("k3s"), profile.k3s.version)


@pytest.fixture(scope="session")
def example_image(tmp_path_factory, example_k3s_bundle):
    """The example rack's jumphost image (with its Pis' netboot tree and NFS
    root), built once for the VM tests: (profile, output dir, outputs)."""
    from firstboot.profile import load_profiles
    from image import jumphost, k3s_bundle
    reason = tiers.cannot_run("vm")
    if reason:
        pytest.skip(f"vm tier cannot run here: {reason}")
    out = tmp_path_factory.mktemp("image")
    [profile] = load_profiles([EXAMPLE_PROFILE])
    options = jumphost.ImageOptions(output=out, k3s_bundles=(k3s_bundle.verify(example_k3s_bundle),))
    outputs = jumphost.build([profile], options)
    return profile, out, outputs


# A new board for the example's second Pi: same name, new serial and MAC.
REPLACEMENT_PI = {"name": "pi-example-02", "serial": "0a1b2c92", "mac": "dc:a6:32:00:00:92"}


@pytest.fixture(scope="session")
def replacement_sdcard(tmp_path_factory, example_k3s_bundle):
    """The SD card an operator writes for a replaced Pi: the example profile
    with pi-example-02's entry changed to the new board (REPLACEMENT_PI),
    built by `build.py sdcard`: (profile, output dir, build.py's stdout)."""
    import yaml
    from firstboot.profile import load_profiles
    reason = tiers.cannot_run("vm")
    if reason:
        pytest.skip(f"vm tier cannot run here: {reason}")
    profiles = tmp_path_factory.mktemp("profiles") / "rack-profiles"
    shutil.copytree(EXAMPLE_PROFILE.parent, profiles)
    document = yaml.safe_load((profiles / "example.yaml").read_text())
    [entry] = [pi for pi in document["pis"] if pi["name"] == REPLACEMENT_PI["name"]]
    entry.update(REPLACEMENT_PI)
    (profiles / "example.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    out = tmp_path_factory.mktemp("sdcard")
    result = subprocess.run([sys.executable, str(REPO / "build.py"), "sdcard", str(profiles / "example.yaml"),
                             "-o", str(out), "--k3s-bundle", str(example_k3s_bundle)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    [profile] = load_profiles([profiles / "example.yaml"])
    return profile, out, result.stdout
