"""A NoCloud seed: a small FAT filesystem labelled CIDATA holding a rack's
user-data, meta-data and network-config. Put it on a USB stick (or attach it
as a second disk) beside a freshly flashed jumphost, and it becomes that rack's
jumphost.

A seed can also carry what the first-boot agent needs on this site, as
NoCloud vendor-data that cloud-init writes root-only under /etc/rackboot:
endpoint overrides (agent.env, read by the agent's unit) and a service
account key for Application Default Credentials. The stick then holds a
credential: keep it like one. Such a seed image is written 0600.
"""

import json
import os
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from firstboot import files
from firstboot.errors import BadInput
from firstboot.layout import MACHINE
from firstboot.profile import RackProfile
from image import agent_env as agent_env_file
from image.render import render_rack
from firstboot.commands import run

SEED_FILES = ("user-data", "meta-data", "network-config")
SEED_KIB = 1024
AGENT_ENV = str(MACHINE.agent_env)
CREDENTIALS = str(MACHINE.credentials)
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
KEY_MAX_BYTES = 64 * 1024      # a service account key is about 2.3 kB


def seed_image_name(profile: RackProfile) -> str:
    return f"seed-{profile.rack}.img"


def read_credentials(path: Path) -> str:
    """A service account key file: a regular file (not a FIFO or a device),
    small, UTF-8, holding a JSON object. Its content is never shown."""
    problem = f"{path}: not a readable JSON key file"
    try:
        data = files.read_regular(path, KEY_MAX_BYTES)
    except files.NotRegularFile as err:
        raise BadInput(f"{problem} ({err.kind}, not a regular file)") from None
    except files.TooLarge:
        raise BadInput(f"{problem} (larger than {KEY_MAX_BYTES} bytes)") from None
    except OSError as err:
        raise BadInput(f"{problem} ({err.strerror})") from None
    try:
        key = data.decode("utf-8")
        document = json.loads(key)
    except UnicodeDecodeError:
        raise BadInput(f"{problem} (not UTF-8)") from None
    except ValueError as err:      # the message names a position, never the content
        raise BadInput(f"{problem} (not JSON: {err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(document, dict):
        raise BadInput(f"{problem} (not a JSON object)")
    return key


def vendor_data(agent_env: dict[str, str], credentials: Path | None) -> str:
    env = dict(agent_env)
    files = []
    if credentials is not None:
        if CREDENTIALS_VARIABLE in env:
            raise BadInput(f"--agent-env {CREDENTIALS_VARIABLE}: --credentials sets it (to {CREDENTIALS}); "
                           "give one or the other")
        files.append({"path": CREDENTIALS, "permissions": "0600", "content": read_credentials(credentials)})
        env[CREDENTIALS_VARIABLE] = CREDENTIALS
    if env:
        files.append({"path": AGENT_ENV, "permissions": "0600", "content": agent_env_file.render(env)})
    return "#cloud-config\n" + yaml.safe_dump({"write_files": files}, sort_keys=True)


def make_seed(profile: RackProfile, output_dir: Path, agent_env: dict[str, str] | None = None,
              credentials: Path | None = None) -> Path:
    """output_dir/seed-RACK.img; 0600 when it carries a credential."""
    vendor = vendor_data(agent_env or {}, credentials) if agent_env or credentials else None
    files = render_rack(profile)
    target = output_dir / seed_image_name(profile)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".seed-") as work:
        work = Path(work)
        names = list(SEED_FILES)
        for name in SEED_FILES:
            (work / name).write_text(files[PurePosixPath("jumphost/seed", name)])
        if vendor is not None:
            (work / "vendor-data").write_text(vendor)
            names.append("vendor-data")
        staging = work / "seed.img"
        run(["mkfs.vfat", "-n", "CIDATA", "-C", staging, str(SEED_KIB)])
        run(["mcopy", "-i", staging, *(work / name for name in names), "::/"])
        # Made inside a 0700 directory, so never readable by others on the way.
        os.chmod(staging, 0o600 if credentials is not None else 0o644)
        staging.replace(target)
    return target
