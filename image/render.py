"""Render a rack's files from the jinja2 templates in templates/.

The template tree mirrors the output tree: templates/jumphost/seed/user-data.j2
becomes RACK/jumphost/seed/user-data. templates/pi-node/ is rendered once per
Pi into RACK/pi/nodes/NAME/, and templates/_partials/ only through include.
Beside them, RACK/profile.json is the rack's checked profile, which the agent
reads (firstboot/rack_model.py).

Everything is rendered in memory first and written only when all of it
rendered, so a template error leaves no half-written tree behind.
"""

import os
from pathlib import Path, PurePosixPath

import jinja2

from firstboot.errors import RackbootError
from firstboot import rack_model
from firstboot.layout import MACHINE, RACK_MODEL, Role, rendered_key
from image.atomic import staged_directory
from firstboot.profile import RackProfile

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PER_NODE = "pi-node"
ROLE_TREES = ("jumphost", "pi", "router")

RenderedTree = dict[PurePosixPath, str]


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,   # a typo in a template fails loudly
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _templates_under(top: str) -> list[str]:
    root = TEMPLATES / top
    return sorted(str(PurePosixPath(p.relative_to(TEMPLATES))) for p in root.rglob("*.j2"))


def _render(env: jinja2.Environment, name: str, **context) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateError as err:
        where = f"{name}:{err.lineno}" if getattr(err, "lineno", None) else name
        raise RackbootError(f"templates/{where}: {err}") from None


def render_rack(profile: RackProfile, env: jinja2.Environment | None = None) -> RenderedTree:
    """Every file of one rack, keyed by its path under the rack's output directory."""
    env = env or environment()
    files: RenderedTree = {}
    for top in ROLE_TREES:
        for name in _templates_under(top):
            files[PurePosixPath(name).with_suffix("")] = _render(env, name, p=profile, paths=MACHINE)
    for pi in profile.pis:
        for name in _templates_under(PER_NODE):
            relative = PurePosixPath(name).relative_to(PER_NODE).with_suffix("")
            files[rendered_key(Role.PI, "/" / relative, pi.name)] = _render(env, name, p=profile, pi=pi,
                                                                           paths=MACHINE)
    files[PurePosixPath(RACK_MODEL)] = rack_model.dumps(profile)   # what the agent reads of the rack
    return files


def write_tree(files: RenderedTree, destination: Path) -> None:
    """Replace destination with exactly these files, all or nothing."""
    with staged_directory(destination) as staging:
        for relative, content in sorted(files.items()):
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            os.chmod(path, 0o644)
        os.chmod(staging, 0o755)


def render_all(profiles: list[RackProfile]) -> dict[str, RenderedTree]:
    """Every rack's files, in memory: nothing is written if any template fails."""
    env = environment()
    return {profile.rack: render_rack(profile, env) for profile in profiles}


def write_all(trees: dict[str, RenderedTree], output: Path) -> list[Path]:
    """Write each rack into output/RACK/, replacing it whole; return the rack directories."""
    written = []
    for rack, files in trees.items():
        write_tree(files, output / rack)
        written.append(output / rack)
    return written


def render(profiles: list[RackProfile], output: Path) -> list[Path]:
    """Render every rack into output/RACK/; return the rack directories."""
    return write_all(render_all(profiles), output)
