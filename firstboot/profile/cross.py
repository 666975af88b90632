"""Checks across the racks given together: each must be told apart from the
others by its name and by the MACs and serials that identify its machines,
and operators must reach each on its own: its own jumphost ssh host and its
own attach port (clusters.json: racks attached at once must not collide)."""

from firstboot.profile.model import RackProfile
from firstboot.profile.problems import Keys, Problem, format_path, shown


def _claims(profile: RackProfile) -> list[tuple[Keys, str, str]]:
    """(where, what, value) for everything that names this rack or its machines."""
    claims: list[tuple[Keys, str, str]] = [(("rack",), "rack name", profile.rack)]
    claims += [(("jumphost", "identify", "macs", i), "jumphost MAC", m)
               for i, m in enumerate(profile.jumphost.identify.macs)]
    claims += [(("pis", i, "mac"), "Pi MAC", pi.mac) for i, pi in enumerate(profile.pis) if pi.mac]
    claims += [(("pis", i, "serial"), "Pi serial", pi.serial) for i, pi in enumerate(profile.pis) if pi.serial]
    claims.append((("jumphost", "ssh_host"), "jumphost ssh host", profile.jumphost.ssh_host.lower()))
    if profile.k3s.attach_port is not None:
        claims.append((("k3s", "attach_port"), "attach port", str(profile.k3s.attach_port)))
    return claims


def cross_profile_problems(profiles: list[RackProfile]) -> list[Problem]:
    problems = []
    seen: dict = {}
    for profile in profiles:
        for where, what, value in _claims(profile):
            key = (what.split()[-1], value)          # a jumphost's MAC and a Pi's MAC are one kind
            if key in seen and seen[key][0] != profile.source:
                other_source, other_where = seen[key]
                problems.append(Problem(where, f"{what} {value!r} is also in {shown(other_source)} "
                                               f"({format_path(other_where)})", profile.source))
            else:
                seen.setdefault(key, (profile.source, where))
    return problems
