#!/usr/bin/python3
"""Stands in for EdgeOS's /opt/vyatta/sbin/vyatta-cfg-cmd-wrapper (vyatta-cfg's
scripts/vyatta-cfg-cmd-wrapper), for `system static-host-mapping` only, on a
pretend router (tests/test_router.py binds it at /opt/vyatta/sbin there).

As the real one: the session is $CMD_WRAPPER_SESSION_ID, else the parent's
pid (so each ssh command without it would be a session of its own); set,
delete, discard and commit need a session that `begin` set up; `end` tears
it down. The candidate becomes the active configuration only on commit,
the saved one (config.boot) only on save. The node definitions' checks
(vyatta-cfg-system templates/system/static-host-mapping): host-name matches
^[-a-zA-Z0-9.]+$, inet is one IPv4 address (a set replaces it), alias is
multi. Stricter where unsure: a commit with nothing changed fails (exit 1,
"No configuration changes to commit"), begin on a live session and end
without one fail. A commit writes /etc/hosts' `#vyatta entry` lines, here
STATE/hosts. Every call is logged (STATE/calls) with its session.

STATE/commit-fails present: commit fails, as a failing commit script would.
Standard library only: it runs as the router's admin user with the system python.

Against a real EdgeOS router (there is no switch for it in the tests): run
`./build.py router PROFILE --to ROUTER --edgeos --cutover --dry-run`, then
without --dry-run, and compare `show system static-host-mapping` on the
router with what tests/test_router.py expects of this stand-in.
"""

import ipaddress
import json
import os
import re
import sys
from pathlib import Path

STATE = Path(__file__).resolve().parent.parent / "state"
HOST_NAME = re.compile(r"[-a-zA-Z0-9.]+")
PREFIX = ["system", "static-host-mapping", "host-name"]


def fail(message: str) -> None:
    print(message)
    sys.exit(1)


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def store(path: Path, config: dict) -> None:
    path.write_text(json.dumps(config, sort_keys=True))


def edit(config: dict, verb: str, words: list[str]) -> None:
    if words[:3] != PREFIX or len(words) not in (4, 6) or (len(words) == 6 and words[4] not in ("inet", "alias")):
        fail(f"Configuration path: [{' '.join(words)}] is not valid\nSet failed" if verb == "set" else
             f"Configuration path: [{' '.join(words)}] is not valid\nDelete failed")
    name = words[3]
    if not HOST_NAME.fullmatch(name):
        fail(f"invalid host name {name}\nValue validation failed\n{verb.capitalize()} failed")
    if verb == "delete":
        if name not in config:
            fail("Nothing to delete (the specified node does not exist)")
        del config[name]
        return
    entry = config.setdefault(name, {"inet": None, "alias": []})
    if len(words) == 4:
        return
    value = words[5]
    if words[4] == "inet":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            fail(f'"{value}" is not a valid value of type "ipv4"\nValue validation failed\nSet failed')
        entry["inet"] = value
    elif value not in entry["alias"]:
        entry["alias"].append(value)


def commit(session: Path) -> None:
    candidate, active = load(session), load(STATE / "active.json")
    missing = [name for name, entry in candidate.items() if entry["inet"] is None]
    if missing:
        fail(f"IP address for the static mapping must be set ({missing[0]})\nCommit failed")
    if candidate == active:
        fail("No configuration changes to commit")
    if (STATE / "commit-fails").exists():
        fail("[ system static-host-mapping ]\nCommit failed")
    store(STATE / "active.json", candidate)
    (STATE / "hosts").write_text("".join(f"{entry['inet']}\t {name} {' '.join(entry['alias'])} \t #vyatta entry\n"
                                         for name, entry in sorted(candidate.items())))


def main(argv: list[str]) -> None:
    sid = os.environ.get("CMD_WRAPPER_SESSION_ID") or str(os.getppid())
    with open(STATE / "calls", "a") as calls:
        calls.write(json.dumps([sid, *argv]) + "\n")
    session = STATE / f"session-{sid}.json"
    verb = argv[0] if argv else ""
    if verb == "begin":
        if session.exists():
            fail(f"session {sid} already exists")
        store(session, load(STATE / "active.json"))
    elif verb == "end":
        if not session.exists():
            fail(f"no session {sid} to tear down")
        session.unlink()
    elif verb == "save":
        store(STATE / "config.boot.json", load(STATE / "active.json"))
        print("Saving configuration to '/config/config.boot'...\nDone")
    elif verb in ("set", "delete", "discard", "commit"):
        if not session.exists():
            fail(f"{verb}: not in a configuration session")
        if verb == "discard":
            store(session, load(STATE / "active.json"))
        elif verb == "commit":
            commit(session)
        else:
            config = load(session)
            edit(config, verb, argv[1:])
            store(session, config)
    else:
        fail(f'Invalid command "{verb}" for vyatta-cfg-cmd-wrapper')


if __name__ == "__main__":
    main(sys.argv[1:])
