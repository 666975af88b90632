"""The token step: the value lands only in the root-only token file."""

import os
import stat

import pytest

from firstboot import join, secretref
from firstboot.errors import RackbootError
from firstboot.token import install_token, k3s_token_password

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


CA_HASH = "ab" * 32


@pytest.mark.parametrize("token, password", [
    (b"plain-secret", b"plain-secret"),
    (b"pa:ss:word", b"pa:ss:word"),                                # bare: all of it, colons too
    (f"K10{CA_HASH}::server:pa:ss".encode(), b"pa:ss"),            # all after ::server:
    (f"K10{CA_HASH}::node:a::b".encode(), b"a::b"),
    (b"K10::server:no-hash", b"no-hash"),
    (b"K10abc:def", b"def"),                                       # K10 without '::': credentials
    (b"K10abc", None),                                             # no ':' in the credentials
    (b"K10" + b"a" * 10 + b"::server:x", None),                    # CA hash of the wrong length
    (f"K10{CA_HASH}::server:".encode(), None),                     # empty password
    (b"abcdef.0123456789abcdef", None),                            # bootstrap token: no password
    (b"", None),
])
def test_k3s_token_password_follows_k3s_parse_token(token, password):
    from tests.doubles import k3s_standin
    assert k3s_token_password(token) == password
    # The stand-in reads tokens by the same rule (it exits where k3s does).
    if password is not None:
        assert k3s_standin.token_secret(token.decode()) == password.decode()
    else:
        with pytest.raises(SystemExit):
            k3s_standin.token_secret(token.decode())


def k3s_server(tmp_path, secret: bytes):
    """A server's datastore, and the server/token k3s keeps beside it."""
    datastore = tmp_path / "server/db"
    datastore.mkdir(parents=True)
    (tmp_path / "server/token").write_bytes(f"K10{CA_HASH}::server:".encode() + secret + b"\n")
    return datastore


def test_rotated_token_with_colons_is_taken(tmp_path):
    """After `k3s token rotate --new-token new:pass:word`, k3s's server/token
    holds K10<hash>::server:new:pass:word; the store's new token matches it."""
    path = tmp_path / "etc/token"
    install_token(REF, "test-rack", path, access=lambda ref: b"old:token")
    datastore = k3s_server(tmp_path, b"new:pass:word")
    result = install_token(REF, "test-rack", path, access=lambda ref: b"new:pass:word", datastore=datastore)
    assert result["changed"] is True and path.read_bytes() == b"new:pass:word\n"


def test_token_matching_only_the_tail_of_a_colon_secret_is_refused(tmp_path):
    """k3s's secret is a:b; a store holding b is another token, not the rotated one."""
    path = tmp_path / "etc/token"
    install_token(REF, "test-rack", path, access=lambda ref: b"old-token")
    datastore = k3s_server(tmp_path, b"a:b")
    with pytest.raises(RackbootError, match="was made with the old one"):
        install_token(REF, "test-rack", path, access=lambda ref: b"b", datastore=datastore)
    assert path.read_bytes() == b"old-token\n"


@pytest.mark.parametrize("value", [b"K10abc", b"abcdef.0123456789abcdef"])
def test_refuses_tokens_in_which_k3s_finds_no_password(tmp_path, value):
    path = tmp_path / "token"
    with pytest.raises(RackbootError, match="k3s finds no password in it") as caught:
        install_token(REF, "test-rack", path, access=lambda ref: value)
    assert not path.exists() and value.decode() not in str(caught.value)


@pytest.mark.parametrize("value, message, hint", [
    (b"  \n", "sm://rackboot-test/k3s-token: the secret is empty", "store the k3s token there"),
    (b"line1\nline2", "sm://rackboot-test/k3s-token: the secret has more than one line; a k3s token has one",
     "store the token alone, or use {ref: ..., key: ...} for a Secret YAML"),
    (b"K10" + b"ab" * 32 + b"::server:line1",
     "sm://rackboot-test/k3s-token: the secret is a secure k3s token (K10<CA hash>::...), which pins one "
     "server's CA; a replacement jumphost would have another",
     "store the short form: the part after '::server:' of K10...::server:SECRET"),
    (b"K10abc", "sm://rackboot-test/k3s-token: the secret is not a k3s server token: k3s finds no password in "
     "it (it takes PASSWORD, or K10<CA hash>::USER:PASSWORD)", "store the rack's k3s token, the password alone"),
])
def test_each_refusal_names_the_reference_and_says_what_to_store(tmp_path, value, message, hint):
    with pytest.raises(RackbootError) as caught:
        install_token(REF, "test-rack", tmp_path / "token", access=lambda ref: value)
    assert (str(caught.value), caught.value.hint) == (message, hint)


def test_a_refused_rotation_says_how_to_rotate(tmp_path):
    path = tmp_path / "token"
    install_token(REF, "test-rack", path, access=lambda ref: TOKEN)
    datastore = k3s_server(tmp_path, TOKEN)
    with pytest.raises(RackbootError) as caught:
        install_token(REF, "test-rack", path, access=lambda ref: b"new-token", datastore=datastore)
    assert str(caught.value) == (f"sm://rackboot-test/k3s-token: the k3s token changed, but this server's "
                                 f"datastore ({datastore}) was made with the old one and k3s refuses to start "
                                 "with another")
    assert caught.value.hint == ("rotate it in k3s first (on the jumphost: k3s token rotate --token OLD "
                                 "--new-token NEW), or reflash the jumphost; see the README, 'Rotating the token'")


def test_the_agent_token_file_is_root_only_and_either_file_changing_is_a_change(tmp_path):
    path = tmp_path / "token"
    install_token(REF, "test-rack", path, access=lambda ref: TOKEN)
    agent_file = tmp_path / "agent-token"
    assert stat.S_IMODE(os.stat(agent_file).st_mode) == 0o600
    path.write_bytes(TOKEN)                 # the token file alone differs (its newline)
    assert install_token(REF, "test-rack", path, access=lambda ref: TOKEN)["changed"] is True
    assert path.read_bytes() == TOKEN + b"\n"
    agent_file.write_bytes(b"stale\n")      # the agent token file alone differs
    assert install_token(REF, "test-rack", path, access=lambda ref: TOKEN)["changed"] is True
    assert agent_file.read_bytes() == join.agent_token(TOKEN, "test-rack") + b"\n"
    assert install_token(REF, "test-rack", path, access=lambda ref: TOKEN)["changed"] is False


def test_a_pi_writes_the_jumphosts_agent_token_root_only(tmp_path, monkeypatch):
    from firstboot import token
    answers = []
    monkeypatch.setattr(join, "fetch", lambda profile: answers.pop(0))
    monkeypatch.setattr(join, "url", lambda profile: "http://10.1.0.1:8677/v1/agent-token")
    path = tmp_path / "token"
    answers.append(b"rackboot-agent-abc")
    assert token.install_pi_token(object(), path) == {"source": "http://10.1.0.1:8677/v1/agent-token",
                                                      "file": str(path), "changed": True}
    assert path.read_bytes() == b"rackboot-agent-abc\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    answers.append(b"rackboot-agent-abc")
    assert token.install_pi_token(object(), path)["changed"] is False
    answers.append(b"rackboot-agent-abc\nsecond line")
    with pytest.raises(RackbootError) as caught:
        token.install_pi_token(object(), path)
    assert str(caught.value) == ("http://10.1.0.1:8677/v1/agent-token: the answer has more than one line; "
                                 "a k3s token has one")
    assert path.read_bytes() == b"rackboot-agent-abc\n"
