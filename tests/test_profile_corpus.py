"""Every broken profile in tests/profiles/broken/ yields exactly the problems
its `# expect:` lines name, through the real command line: exit status 2,
each problem as FILE: PATH: MESSAGE, and nothing written."""

import re
from pathlib import Path

import pytest

from firstboot.errors import ProfileError
from firstboot.profile import load_profiles

PROFILES = Path(__file__).parent / "profiles"
BROKEN = sorted(p for p in (PROFILES / "broken").glob("[0-9]*.yaml"))


def expectations(path: Path) -> list[str]:
    return re.findall(r"^# expect: (.+)$", path.read_text(), re.M)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_profiles([path])
    return caught.value.problems


def test_corpus_is_large_enough():
    assert len(BROKEN) >= 30
    assert all(expectations(p) for p in BROKEN), "every broken profile states what it expects"


def test_baseline_is_valid():
    [profile] = load_profiles([PROFILES / "broken" / "valid-baseline.yaml"])
    assert profile.rack == "valid-baseline" and len(profile.pis) == 4


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_profile_reports_exactly_its_problems(path):
    problems = problems_of(path)
    expected = expectations(path)
    assert len(problems) == len(expected), problems
    for text in expected:
        assert any(line.startswith(str(path)) and text in line for line in problems), (text, problems)


def test_command_line_exit_status_and_nothing_written(build, tmp_path):
    out = tmp_path / "out"
    path = PROFILES / "broken" / "24-pi-mac.yaml"
    for verb in (["check"], ["render", "-o", str(out)]):
        result = build(*verb, str(path))
        assert result.returncode == 2, result.stderr
        assert f"{path}: pis[3].mac: 'zz:01' is not a MAC address" in result.stderr
        assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("verb", ["check", "render"])
def test_command_line_reports_the_whole_corpus(build, tmp_path, verb):
    """Every broken profile through the real command line at once: exit
    status 2, each expected problem on its own line, no traceback, nothing
    written."""
    out = tmp_path / "out"
    result = build(verb, *map(str, BROKEN), *(["-o", str(out)] if verb == "render" else []))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for path in BROKEN:
        for text in expectations(path):
            assert any(line.startswith(f"  {path}") and text in line for line in lines), (path.name, text)
    assert not out.exists()


def test_all_profiles_checked_before_any_output(build, tmp_path):
    """One broken profile among good ones: nothing is rendered for any."""
    out = tmp_path / "out"
    result = build("render", "-o", str(out), "rack-profiles/example.yaml",
                   str(PROFILES / "broken" / "05-router-outside.yaml"))
    assert result.returncode == 2
    assert not out.exists()


def test_problem_in_defaults_is_reported_in_defaults_file():
    problems = problems_of(PROFILES / "broken-defaults" / "rack.yaml")
    assert problems == [f"{PROFILES / 'broken-defaults' / 'defaults.yaml'}: k3s.version: "
                        "'1.31' is not a k3s release tag such as v1.31.4+k3s1"]


def test_racks_given_together_must_differ():
    with pytest.raises(ProfileError) as caught:
        load_profiles([PROFILES / "cross"])
    assert any(line.startswith(str(PROFILES / "cross" / "b.yaml") + ": rack: rack name 'same-name' is also in")
               for line in caught.value.problems), caught.value.problems


def test_defaults_file_is_not_a_rack(build):
    result = build("check", "rack-profiles/defaults.yaml")
    assert result.returncode == 2
    assert "holds shared defaults, not a rack" in result.stderr


def test_missing_profile_file(build):
    result = build("check", "rack-profiles/no-such-rack.yaml")
    assert result.returncode == 2
    assert "rack-profiles/no-such-rack.yaml: no such rack profile" in result.stderr
