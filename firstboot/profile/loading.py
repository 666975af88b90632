"""Loading rack profiles: from file names to checked, frozen RackProfiles.

Each profile is read as strict YAML (yaml_input), merged over the
defaults.yaml beside it, checked against the schema (schema) and, only once
the schema accepts it, for meaning (checks, manifests) with the schema's
defaults filled in; then the racks given together are checked against each
other (cross). Every problem is collected, and reported in the file its value
came from: the profile, or its defaults.yaml."""

from collections.abc import Iterable
from pathlib import Path

from firstboot.errors import BadInput, ProfileError
from firstboot.profile.checks import semantic_problems
from firstboot.profile.construct import digest, rack_profile
from firstboot.profile.cross import cross_profile_problems
from firstboot.profile.manifest_check import manifest_problems
from firstboot.profile.manifests import resolve_manifests
from firstboot.profile.model import RackProfile
from firstboot.profile.problems import Keys, Problem, Unreadable, shown
from firstboot.profile.schema import schema_problems, with_defaults
from firstboot.profile.yaml_input import check_file_name, read_yaml

DEFAULTS_NAME = "defaults.yaml"


def profile_paths(args: Iterable[str | Path]) -> list[Path]:
    """Expand directories to their profiles (every *.yaml except defaults.yaml)."""
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            paths.extend(sorted(p for p in path.glob("*.yaml") if p.name != DEFAULTS_NAME))
        elif path.name == DEFAULTS_NAME:
            raise BadInput(f"{shown(path)}: holds shared defaults, not a rack",
                           hint="name the rack profiles instead, or their directory")
        elif not path.exists():
            raise BadInput(f"{shown(path)}: no such rack profile")
        else:
            paths.append(path)
    if not paths:
        raise BadInput("no rack profiles given", hint="name files such as rack-profiles/example.yaml or a directory")
    return paths


def merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key; anything else in override replaces base."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def origin(path: Keys, rack: dict, defaults: dict) -> str:
    """Which file the value at path came from, "rack" or "defaults",
    following merge: the rack owns whatever it sets, down to whole lists;
    defaults own what only they set."""
    rack_part, default_part = rack, defaults
    for part in path:
        if isinstance(rack_part, dict) and part in rack_part:
            if isinstance(rack_part[part], dict) and isinstance(default_part, dict) \
                    and isinstance(default_part.get(part), dict):
                rack_part, default_part = rack_part[part], default_part[part]
                continue
            return "rack"
        if isinstance(default_part, dict) and part in default_part:
            return "defaults"
        return "rack"
    return "rack"


def _checked(doc: dict, source: Path) -> tuple[RackProfile | None, list[Problem]]:
    """The model of a merged document, or the problems that keep it from one."""
    problems = schema_problems(doc)
    if problems:
        return None, problems      # the checks of meaning need a document the schema accepted
    complete = with_defaults(doc)
    manifests, problems = resolve_manifests(complete["manifests"], source.parent)
    problems += semantic_problems(complete)
    if not problems:
        problems = manifest_problems(complete, manifests, source)   # read only from files that resolved
    if problems:
        return None, problems
    return rack_profile(complete, source, digest(doc), manifests), []


def load_one(path: Path) -> tuple[RackProfile | None, list[Problem]]:
    """Load one profile: the model, or None and every problem found."""
    defaults_path = path.parent / DEFAULTS_NAME
    try:
        check_file_name(path)
        rack_doc = read_yaml(path)
        defaults_doc = read_yaml(defaults_path) if defaults_path.exists() else {}
    except Unreadable as err:
        return None, err.problems
    profile, problems = _checked(merge(defaults_doc, rack_doc), path)
    files = {"rack": path, "defaults": defaults_path}
    # A problem inside a manifest already names its file.
    located = {problem if problem.file else problem.located(files[origin(problem.path, rack_doc, defaults_doc)])
               for problem in problems}
    return profile, sorted(located, key=str)      # each once, in the order of their places


def load_profiles(args: Iterable[str | Path]) -> list[RackProfile]:
    """Load and check every profile; raise ProfileError listing every problem
    as `FILE: PATH: MESSAGE`."""
    problems: list[Problem] = []
    profiles: list[RackProfile] = []
    for path in profile_paths(args):
        profile, found = load_one(path)
        problems += found
        if profile:
            profiles.append(profile)
    problems += cross_profile_problems(profiles)
    if problems:
        raise ProfileError([str(problem) for problem in problems])
    return profiles
