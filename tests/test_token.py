"""The token step: the value lands only in the root-only token file."""

import os
import stat

import pytest

from firstboot import join, secretref
from firstboot.errors import RackbootError
from firstboot.token import install_token

TOKEN = b"rack-token-never-in-a-log"
REF = secretref.parse("sm://rackboot-test/k3s-token")


def test_writes_token_file_root_only_and_reports_change(tmp_path):
    path = tmp_path / "etc/rancher/k3s/token"
    result = install_token(REF, "test-rack", path, access=lambda ref: TOKEN + b"\n")
    assert path.read_bytes() == TOKEN + b"\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert result == {"reference": "sm://rackboot-test/k3s-token", "file": str(path), "changed": True}
    assert TOKEN.decode() not in repr(result)
    again = install_token(REF, "test-rack", path, access=lambda ref: TOKEN)
    assert again["changed"] is False
    rotated = install_token(REF, "test-rack", path, access=lambda ref: b"rotated-rack-token")
    assert rotated["changed"] is True and path.read_bytes() == b"rotated-rack-token\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent-token", "token"]   # no temporary left
    assert (path.parent / "agent-token").read_bytes() == join.agent_token(b"rotated-rack-token", "test-rack") + b"\n"


@pytest.mark.parametrize("value, message", [(b"  \n", "the secret is empty"),
                                            (b"line1\nline2", "more than one line"),
                                            (b"K10" + b"ab" * 32 + b"::server:line1", "pins one server's CA")])
def test_refuses_values_that_are_not_a_token(tmp_path, value, message):
    path = tmp_path / "token"
    with pytest.raises(RackbootError, match=message) as caught:
        install_token(REF, "test-rack", path, access=lambda ref: value)
    assert not path.exists()
    assert "line1" not in str(caught.value)


def test_server_with_a_datastore_keeps_its_token_when_the_store_changes(tmp_path):
    """k3s refuses to start on a datastore made with another token: the old
    file stays and the error says how to rotate."""
    path, datastore = tmp_path / "token", tmp_path / "db"
    install_token(REF, "test-rack", path, access=lambda ref: TOKEN, datastore=datastore)
    datastore.mkdir()
    assert install_token(REF, "test-rack", path, access=lambda ref: TOKEN, datastore=datastore)["changed"] is False
    with pytest.raises(RackbootError, match="datastore .* was made with the old one") as caught:
        install_token(REF, "test-rack", path, access=lambda ref: b"new-token", datastore=datastore)
    assert "k3s token rotate" in caught.value.hint
    assert path.read_bytes() == TOKEN + b"\n"
