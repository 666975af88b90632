"""sha256sum files: the build host (image/k3s_bundle.verify) and the machine
(firstboot/k3s.find_bundle) read them with one parser (firstboot/checksums.py)
and so take and refuse the same lines."""

import hashlib
import os
from pathlib import Path

import pytest

from firstboot import checksums, k3s
from firstboot.errors import BadInput, RackbootError
from firstboot.layout import Layout
from image import k3s_bundle
from tests.doubles import k3s_standin_bundle

VERSION = "v1.31.4+k3s1"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Odd checksum files, written as a function of the two lines a bundle needs
# (binary, images): (id, text, accepted).
def cases(binary: str, images: str) -> list[tuple[str, bytes, bool]]:
    b, i = f"{binary}  k3s", f"{images}  k3s-airgap-images-amd64.tar.zst"
    other = "0" * 64
    return [
        ("plain", f"{b}\n{i}\n".encode(), True),
        ("binary mode", f"{binary} *k3s\n{i}\n".encode(), True),
        ("no final newline", f"{b}\n{i}".encode(), True),
        ("more assets listed", f"{other}  e2e-passed-amd64.log\n{b}\n{i}\n{other}  k3s-images.txt\n".encode(), True),
        ("CRLF", f"{b}\r\n{i}\r\n".encode(), False),
        ("upper-case hex", f"{binary.upper()}  k3s\n{i}\n".encode(), False),
        ("tab", f"{binary}\tk3s\n{i}\n".encode(), False),
        ("one space", f"{binary} k3s\n{i}\n".encode(), False),
        ("three spaces", f"{binary}   k3s\n{i}\n".encode(), False),
        ("trailing space", f"{b} \n{i}\n".encode(), False),
        ("blank line", f"{b}\n\n{i}\n".encode(), False),
        ("listed twice, same sum", f"{b}\n{b}\n{i}\n".encode(), False),
        ("listed twice, other sum", f"{other}  k3s\n{b}\n{i}\n".encode(), False),
        ("listed twice, text and binary mode", f"{b}\n{binary} *k3s\n{i}\n".encode(), False),
        ("BSD tag", f"SHA256 (k3s) = {binary}\n{i}\n".encode(), False),
        ("escaped name", f"\\{b}\n{i}\n".encode(), False),
        ("comment", f"# sums\n{b}\n{i}\n".encode(), False),
        ("byte-order mark", f"\ufeff{b}\n{i}\n".encode(), False),
        ("not UTF-8", f"{b}\n{i}\n".encode() + b"\xff\n", False),
        ("empty", b"", False),
        ("63 digits", f"{binary[:63]}  k3s\n{i}\n".encode(), False),
        ("65 digits", f"{binary}0  k3s\n{i}\n".encode(), False),
        ("control character in a name", f"{b}\n{i}\n{other}  k3s\x1b[2J\n".encode(), False),
        ("no name", f"{binary}  \n{i}\n".encode(), False),
    ]


CASES = cases("a" * 64, "b" * 64)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return k3s_standin_bundle.make(tmp_path_factory.mktemp("k3s"), VERSION)


def with_sums(bundle: Path, tmp_path: Path, text_for) -> Path:
    """A copy of bundle whose sha256sum-amd64.txt is text_for(binary sum, images sum),
    without bundle.json (which would list the old checksum file's sum)."""
    copy = tmp_path / "bundles" / VERSION
    copy.mkdir(parents=True)
    for path in bundle.iterdir():
        if path.name != "bundle.json":
            (copy / path.name).write_bytes(path.read_bytes())
            os.chmod(copy / path.name, path.stat().st_mode)
    sums = text_for(digest((bundle / "k3s").read_bytes()), digest((bundle / "k3s-airgap-images-amd64.tar.zst").read_bytes()))
    (copy / "sha256sum-amd64.txt").write_bytes(sums)
    return copy


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_build_host_and_machine_agree(bundle, tmp_path, monkeypatch, index):
    name, _, accepted = CASES[index]
    copy = with_sums(bundle, tmp_path, lambda b, i: dict((c[0], c[1]) for c in cases(b, i))[name])
    data = (copy / "sha256sum-amd64.txt").read_bytes()

    def parser():
        try:
            return checksums.parse(data, "sums")
        except checksums.ChecksumFileError as err:
            return err

    def build_host():
        try:
            return k3s_bundle.verify(copy)
        except BadInput as err:
            return err

    def machine():
        try:
            return k3s.find_bundle(Layout(copy.parent).moving(k3s_bundles=copy.parent), VERSION, "amd64")
        except RackbootError as err:
            return err

    outcomes = {"parser": parser(), "build host": build_host(), "machine": machine()}
    failed = {side: str(result) for side, result in outcomes.items() if isinstance(result, Exception)}
    if accepted:
        assert not failed
    else:
        assert sorted(failed) == ["build host", "machine", "parser"], failed
        # both name the file and the line (or the file, for whole-file problems)
        for side in ("build host", "machine"):
            assert f"{copy}/sha256sum-amd64.txt" in failed[side]


def test_lines_and_names():
    sums = checksums.parse(f"{'a' * 64}  k3s\n{'b' * 64} *k3s-arm64\n".encode(), "x")
    assert sums == {"k3s": "a" * 64, "k3s-arm64": "b" * 64}
    with pytest.raises(checksums.ChecksumFileError, match=r"^sums:3: k3s is listed twice$"):
        checksums.parse(f"{'a' * 64}  k3s\n{'b' * 64}  other\n{'c' * 64}  k3s\n".encode(), "sums")
    with pytest.raises(checksums.ChecksumFileError, match=r"^sums:1: not a sha256sum line"):
        checksums.parse(f"{'A' * 64}  k3s\n".encode(), "sums")


def test_read_refuses_links_fifos_and_huge_files(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text(f"{'a' * 64}  k3s\n")
    (tmp_path / "link.txt").symlink_to(real)
    with pytest.raises(checksums.ChecksumFileError, match="link.txt: a symbolic link"):
        checksums.read(tmp_path / "link.txt")
    os.mkfifo(tmp_path / "fifo.txt")
    with pytest.raises(checksums.ChecksumFileError, match="fifo.txt: a FIFO, not a regular file"):
        checksums.read(tmp_path / "fifo.txt")      # and does not block
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(checksums.ChecksumFileError, match="dir.txt: a directory, not a regular file"):
        checksums.read(tmp_path / "dir.txt")
    (tmp_path / "huge.txt").write_bytes(b"a" * (checksums.MAX_BYTES + 1))
    with pytest.raises(checksums.ChecksumFileError, match="huge.txt: larger than"):
        checksums.read(tmp_path / "huge.txt")
    with pytest.raises(FileNotFoundError):
        checksums.read(tmp_path / "missing.txt")
