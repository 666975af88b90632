"""Each rack's checked profile, as the build leaves it beside the rack's
rendered tree (RACK/profile.json) and as the agent reads it at boot.

The build has already checked the YAML (schema, meaning, racks together);
checking it again at every boot would only find the same answer slower, and
a profile the agent read differently from the builder would render one rack
and run another. So the agent reads the model, not the YAML (which stays in
the image for people to read).

Paths in the model (the profile file, its manifests) are stored relative to
the profiles' directory and read back under the machine's: the build host's
checkout is not where the image keeps them.
"""

import dataclasses
import json
from pathlib import Path

from firstboot import bundle, files
from firstboot.errors import BadInput
from firstboot.layout import RACK_MODEL, Layout
from firstboot.profile import RackProfile, from_json, to_json

MAX_BYTES = 4 << 20     # the 300-Pi profile's model is about 150 KiB
REBUILD = "the model is written by the build: build the image again"


def dumps(profile: RackProfile) -> str:
    """The model of profile, with its paths relative to its directory."""
    directory = profile.source.resolve().parent
    relative = dataclasses.replace(profile, source=Path(profile.source.name),
                                   manifests=tuple(m.relative_to(directory) for m in profile.manifests))
    return json.dumps(to_json(relative), indent=1, sort_keys=True) + "\n"


def loads(text: str, profiles: Path, where: Path) -> RackProfile:
    """The model in text, its paths under profiles; BadInput naming where."""
    try:
        model = from_json(json.loads(text))
    except json.JSONDecodeError as err:
        raise BadInput(f"{where}: not JSON: {err}", hint=REBUILD) from None
    except BadInput as err:
        raise BadInput(f"{where}: {err}", hint=err.hint) from None
    for path in (model.source, *model.manifests):
        if path.is_absolute() or ".." in path.parts:
            raise BadInput(f"{where}: {path}: not a path inside the profiles' directory", hint=REBUILD)
    return dataclasses.replace(model, source=profiles / model.source,
                               manifests=tuple(profiles / m for m in model.manifests))


def read_all(layout: Layout) -> list[RackProfile]:
    """Every rack model the machine has, sorted by rack: each from the rack's
    bundle in use (layout.chosen, else the newest verified: firstboot/bundle.py),
    its manifests from the bundle's own profiles when it has them."""
    if not layout.chosen:
        layout = bundle.choose_all(layout)[0]
    paths = [(rack, directory) for rack, directory in layout.chosen if (directory / RACK_MODEL).exists()]
    if not paths:
        raise BadInput(f"no rack models ({layout.racks}/RACK/{RACK_MODEL}) on this machine",
                       hint="the image was built without its racks: build it again with ./build.py image")
    return [_read(layout, rack, directory) for rack, directory in paths]


def read_rack(layout: Layout, rack: str) -> RackProfile | None:
    """The model of rack where its rendered files are taken from
    (layout.rack: the chosen bundle, else the image's); None if there is none."""
    directory = layout.rack(rack)
    return _read(layout, rack, directory) if (directory / RACK_MODEL).exists() else None


def _read(layout: Layout, rack: str, directory: Path) -> RackProfile:
    path = directory / RACK_MODEL
    try:
        text = files.read_regular(path, MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError, files.NotRegularFile, files.TooLarge) as err:
        raise BadInput(f"{path}: cannot read the rack model: {err}",
                       hint="the image is damaged: reflash or rebuild it") from None
    own = directory / bundle.PROFILES
    model = loads(text, own if own.is_dir() else layout.profiles, path)
    if model.rack != rack:
        raise BadInput(f"{path}: holds rack {model.rack!r}, not {rack!r}",
                       hint="the image is damaged: reflash or rebuild it")
    return model
