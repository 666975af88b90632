"""-o DIR: rackboot writes only into a new or empty directory, or one it made
(image/output.py), and refuses anything else before any work, through the
real command line: exit 2, the path named, nothing written."""

import os
import subprocess
from pathlib import Path

import pytest

from firstboot.errors import BadInput
from image import output
from image.output import Kind

EXAMPLE = "rack-profiles/example.yaml"
# Every verb with -o, with what it needs besides the profile to get that far.
VERBS = {
    "render": [],
    "seed": [],
    "image": [],
    "netboot": [],
    "sdcard": [],
    "fetch-k3s": [],
    "boot": ["--until-report"],
}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type and content (or link target)."""
    seen = {}
    for path in sorted([root, *root.rglob("*")]):
        if path.is_symlink():
            seen[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            seen[str(path)] = ("file", path.read_bytes())
        else:
            seen[str(path)] = ("dir",)
    return seen


def refused(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in named:
        assert text in result.stderr, result.stderr
    assert "hint:" in result.stderr


@pytest.mark.parametrize("verb", VERBS)
def test_refuses_a_directory_rackboot_did_not_make(build, tmp_path, verb):
    """A non-empty directory without the marker is left exactly as it was, whatever verb."""
    mine = tmp_path / "mine"
    (mine / "etc").mkdir(parents=True)
    (mine / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (mine / "jumphost.img").write_bytes(b"not rackboot's")     # boot gets as far as the output check
    before = snapshot(mine)
    result = build(verb, EXAMPLE if verb != "fetch-k3s" else "v1.31.4+k3s1", "-o", str(mine), *VERBS[verb])
    refused(result, f"{mine}: a directory rackboot did not make", output.MARKER)
    assert snapshot(mine) == before


@pytest.mark.parametrize("verb", VERBS)
def test_refuses_a_file(build, tmp_path, verb):
    target = tmp_path / "a-file"
    target.write_text("keep me\n")
    result = build(verb, EXAMPLE if verb != "fetch-k3s" else "v1.31.4+k3s1", "-o", str(target), *VERBS[verb])
    if verb == "boot":      # boot first needs DIR/jumphost.img, which a file cannot hold
        assert result.returncode == 2 and "jumphost.img does not exist" in result.stderr
    else:
        refused(result, f"{target}: not a directory but a file")
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("verb", ["render", "seed", "fetch-k3s"])
def test_refuses_the_root_directory(build, verb):
    result = build(verb, EXAMPLE if verb != "fetch-k3s" else "v1.31.4+k3s1", "-o", "/")
    refused(result, "/: is the root directory")
    assert not Path("/.rackboot-output").exists() and not Path("/example").exists()


def test_refuses_root_through_dot_dot_and_a_link(build, tmp_path):
    link = tmp_path / "to-root"
    link.symlink_to("/")
    for spelling in (f"{tmp_path}/../../../../../../..", str(link)):
        refused(build("render", EXAMPLE, "-o", spelling), "is the root directory")


def test_refuses_a_path_under_a_file(build, tmp_path):
    (tmp_path / "file").write_text("x")
    refused(build("render", EXAMPLE, "-o", str(tmp_path / "file" / "out")), f"{tmp_path / 'file'} is not a directory")
    assert (tmp_path / "file").read_text() == "x"


def test_refuses_a_dangling_link(build, tmp_path):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    refused(build("render", EXAMPLE, "-o", str(tmp_path / "gone")), "a symbolic link to nothing")
    assert not (tmp_path / "nowhere").exists()


def test_empty_and_new_directories_are_taken_and_marked(build, tmp_path):
    for target in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        if target.name == "empty":
            target.mkdir()
        result = build("render", EXAMPLE, "-o", str(target))
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in target.iterdir()) == [output.MARKER, "example"]
        again = build("render", EXAMPLE, "-o", str(target))      # rackboot's own directory: rendered again
        assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("verb, name, kind", [
    ("render", "example", "file"),
    ("render", "example", "link"),
    ("seed", "seed-example.img", "dir"),
    ("seed", "seed-example.img", "link"),
    ("image", "jumphost.img.bmap", "link"),
    ("sdcard", "pi-sdcard.img", "dir"),
    ("netboot", "pi-root", "link"),
    ("fetch-k3s", "v1.31.4+k3s1", "file"),
])
def test_in_rackboots_directory_what_is_replaced_must_be_what_it_writes(build, tmp_path, verb, name, kind):
    """A link there would have the replacement land (or the old one be removed) elsewhere."""
    out = tmp_path / "out"
    out.mkdir()
    (out / output.MARKER).write_text(output.MARKER_TEXT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep\n")
    entry = out / name
    if kind == "file":
        entry.write_text("a file\n")
    elif kind == "dir":
        entry.mkdir()
    else:
        entry.symlink_to(elsewhere)
    before = snapshot(tmp_path)
    result = build(verb, EXAMPLE if verb != "fetch-k3s" else "v1.31.4+k3s1", "-o", str(out))
    refused(result, f"{entry}: ", "rackboot writes a")
    assert snapshot(tmp_path) == before


def test_bad_input_writes_no_output_directory(build, tmp_path):
    """The output check only looks; the directory is made once every input passed."""
    out = tmp_path / "out"
    result = build("seed", EXAMPLE, "-o", str(out), "--agent-env", "1BAD=x")
    assert result.returncode == 2 and not out.exists()
    result = build("render", "rack-profiles/no-such.yaml", "-o", str(out))
    assert result.returncode == 2 and not out.exists()


def test_boot_uses_the_directory_image_made(build, tmp_path):
    """image marks its directory, so boot (which writes the seed and its
    QEMU files beside the image) may write there. A blank disk boots to
    nothing; what counts is that boot got past the output check."""
    out = tmp_path / "out"
    output.check(out, {"jumphost.img": Kind.FILE}).claim()       # as `build.py image` leaves it
    (out / "jumphost.img").write_bytes(bytes(1 << 20))
    result = build("boot", EXAMPLE, "-o", str(out), "--until-report", "--timeout", "1")
    assert result.returncode == 1 and "no report from the guest within 1 s" in result.stderr, result.stderr
    assert (out / "seed-example.img").is_file() and (out / "boot-example").is_dir()


def test_output_module_checks(tmp_path):
    marked = output.check(tmp_path / "new", {"x": Kind.DIRECTORY}).claim()
    assert (marked / output.MARKER).read_text() == output.MARKER_TEXT
    (marked / "x").mkdir()
    output.check(marked, {"x": Kind.DIRECTORY})          # its own directory again: fine
    (marked / output.MARKER).unlink()
    (marked / output.MARKER).symlink_to(marked / "x")     # a link is no marker
    with pytest.raises(BadInput, match="a directory rackboot did not make"):
        output.check(marked)
