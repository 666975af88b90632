"""A NoCloud seed: a small FAT filesystem labelled CIDATA holding a rack's
user-data, meta-data and network-config. Put it on a USB stick (or attach it
as a second disk) beside a freshly flashed jumphost, and it becomes that rack's
jumphost.

A seed can also carry what the first-boot agent needs on this site, as
NoCloud vendor-data that cloud-init writes root-only under /etc/rackboot:
endpoint overrides (agent.env, read by the agent's unit) and a service
account key for Application Default Credentials. The stick then holds a
credential: keep it like one.
"""

import json
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from firstboot.errors import BadInput
from firstboot.profile import RackProfile
from image.render import render_rack
from image.run import run

SEED_FILES = ("user-data", "meta-data", "network-config")
SEED_KIB = 1024
AGENT_ENV = "/etc/rackboot/agent.env"
CREDENTIALS = "/etc/rackboot/credentials.json"


def seed_image_name(profile: RackProfile) -> str:
    return f"seed-{profile.rack}.img"


def vendor_data(agent_env: dict[str, str], credentials: Path | None) -> str:
    env = dict(agent_env)
    files = []
    if credentials is not None:
        try:
            key = credentials.read_text()
            json.loads(key)
        except (OSError, ValueError) as err:
            raise BadInput(f"{credentials}: not a readable JSON key file ({err})") from None
        files.append({"path": CREDENTIALS, "permissions": "0600", "content": key})
        env["GOOGLE_APPLICATION_CREDENTIALS"] = CREDENTIALS
    for name, value in env.items():
        if not name.isidentifier() or "\n" in value:
            raise BadInput(f"--agent-env {name}={value!r}: not a NAME=VALUE environment setting")
    if env:
        files.append({"path": AGENT_ENV, "permissions": "0600",
                      "content": "".join(f"{k}={v}\n" for k, v in sorted(env.items()))})
    return "#cloud-config\n" + yaml.safe_dump({"write_files": files}, sort_keys=True)


def make_seed(profile: RackProfile, output_dir: Path, agent_env: dict[str, str] | None = None,
              credentials: Path | None = None) -> Path:
    files = render_rack(profile)
    target = output_dir / seed_image_name(profile)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".seed-") as work:
        work = Path(work)
        names = list(SEED_FILES)
        for name in SEED_FILES:
            (work / name).write_text(files[PurePosixPath("jumphost/seed", name)])
        if agent_env or credentials:
            (work / "vendor-data").write_text(vendor_data(agent_env or {}, credentials))
            names.append("vendor-data")
        staging = work / "seed.img"
        run(["mkfs.vfat", "-n", "CIDATA", "-C", staging, str(SEED_KIB)])
        run(["mcopy", "-i", staging, *(work / name for name in names), "::/"])
        staging.replace(target)
    return target
