import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_build(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run build.py as a user would (inside the venv, so no re-bootstrap)."""
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session", autouse=True)
def _reap_orphaned_machines():
    """Pretend machines left running by a killed test run would hold the ports
    this run needs (tests/machine.py)."""
    from tests import machine
    reaped = machine.reap_orphans()
    if reaped:
        print(f"reaped {len(reaped)} pretend machines of an earlier, killed test run", file=sys.stderr)
    yield


@pytest.fixture
def build():
    return run_build


# ---------------------------------------------------------------- VM tier

EXAMPLE_PROFILE = REPO / "rack-profiles" / "example.yaml"


def _missing_capability() -> str | None:
    from image import qemu
    if os.geteuid() != 0:
        return "building an image needs root (mmdebstrap, owner-preserving unpack)"
    for tool in ("mmdebstrap", "genimage", "qemu-system-x86_64", "bmaptool"):
        if not shutil.which(tool):
            return f"{tool} is not installed (tests/run installs it)"
    if not qemu.OVMF_CODE.exists():
        return "OVMF firmware is not installed"
    return None


@pytest.fixture(scope="session")
def example_image(tmp_path_factory):
    """The example rack's jumphost image (with its Pis' netboot tree and NFS
    root), built once for the VM tests: (profile, output dir, outputs)."""
    from firstboot.profile import load_profiles
    from image import jumphost, k3s_bundle
    from tests.doubles import k3s_standin_bundle
    reason = _missing_capability()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("image")
    [profile] = load_profiles([EXAMPLE_PROFILE])
    bundle_dir = k3s_standin_bundle.real_bundle() or k3s_standin_bundle.make(
        tmp_path_factory.mktemp("k3s"), profile.k3s.version)
    options = jumphost.ImageOptions(output=out, k3s_bundle=k3s_bundle.verify(bundle_dir))
    outputs = jumphost.build([profile], options)
    return profile, out, outputs


