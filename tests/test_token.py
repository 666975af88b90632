"""The token step: the value lands only in the root-only token file."""

import os
import stat

import pytest

from firstboot import secretref
from firstboot.errors import RackbootError
from firstboot.token import install_token

TOKEN = b"K10abc::server:never-in-a-log"
REF = secretref.parse("sm://rackboot-test/k3s-token")


def test_writes_token_file_root_only_and_reports_change(tmp_path):
    path = tmp_path / "etc/rancher/k3s/token"
    result = install_token(REF, path, access=lambda ref: TOKEN + b"\n")
    assert path.read_bytes() == TOKEN + b"\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert result == {"reference": "sm://rackboot-test/k3s-token", "file": str(path), "changed": True}
    assert TOKEN.decode() not in repr(result)
    again = install_token(REF, path, access=lambda ref: TOKEN)
    assert again["changed"] is False
    rotated = install_token(REF, path, access=lambda ref: b"K10new::server:rotated")
    assert rotated["changed"] is True and path.read_bytes() == b"K10new::server:rotated\n"
    assert [p.name for p in path.parent.iterdir()] == ["token"]


@pytest.mark.parametrize("value, message", [(b"  \n", "the secret is empty"),
                                            (b"line1\nline2", "more than one line")])
def test_refuses_values_that_are_not_a_token(tmp_path, value, message):
    path = tmp_path / "token"
    with pytest.raises(RackbootError, match=message) as caught:
        install_token(REF, path, access=lambda ref: value)
    assert not path.exists()
    assert "line1" not in str(caught.value)
