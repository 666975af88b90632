"""The names the Kubernetes API server accepts, as its validation words them
(v1.31: apimachinery's pkg/util/validation and pkg/api/validation, and
pkg/apis/*/validation for which rule a kind's name follows).

Checked at `check` time, so a name the API server would refuse (422) stops
the build instead of the first boot's apply. The k3s stand-in
(tests/doubles/k8s_api/validation.py) enforces the same rules on its own: it
runs packed as a zip of its own modules on pretend machines, without the
product's packages."""

import re

DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + ")*"
DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

_EXAMPLES = {DNS1123_LABEL: "'my-name',  or '123-abc'", DNS1035_LABEL: "'my-name',  or 'abc-123'",
             DNS1123_SUBDOMAIN: "'example.com'"}
_WORDS = {DNS1123_LABEL: "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                         "and must start and end with an alphanumeric character",
          DNS1035_LABEL: "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
                         "an alphabetic character, and end with an alphanumeric character",
          DNS1123_SUBDOMAIN: "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                             "'-' or '.', and must start and end with an alphanumeric character"}
_LIMITS = {DNS1123_LABEL: 63, DNS1035_LABEL: 63, DNS1123_SUBDOMAIN: 253}

# Which rule an object's metadata.name follows; every other kind: a DNS-1123 subdomain.
_NAME_RULES = {"Namespace": DNS1123_LABEL, "Service": DNS1035_LABEL}
PATH_SEGMENT_KINDS = frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})


def pattern_problems(value: str, pattern: str) -> list[str]:
    """The API server's words for value against one of the DNS patterns above."""
    problems = [f"must be no more than {_LIMITS[pattern]} characters"] if len(value) > _LIMITS[pattern] else []
    if not re.fullmatch(pattern, value):
        problems.append(f"{_WORDS[pattern]} (e.g. {_EXAMPLES[pattern]}, regex used for validation is '{pattern}')")
    return problems


def name_problems(kind: str, name: str) -> list[str]:
    """What the API server says of name as the metadata.name of a kind."""
    if kind in PATH_SEGMENT_KINDS:
        if name in (".", ".."):
            return [f"may not be '{name}'"]
        return [f"may not contain '{c}'" for c in ("/", "%") if c in name]
    return pattern_problems(name, _NAME_RULES.get(kind, DNS1123_SUBDOMAIN))


def qualified_name_problems(key: str) -> list[str]:
    """A label or annotation key: [DNS-1123 subdomain '/'] name part."""
    prefix, slash, name = key.rpartition("/")
    problems = ["prefix part " + p for p in pattern_problems(prefix, DNS1123_SUBDOMAIN)] if slash else []
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not re.fullmatch(QUALIFIED_NAME, name):
        problems.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
                        f"and end with an alphanumeric character (regex used for validation is '{QUALIFIED_NAME}')")
    return problems


def label_value_problems(value: str) -> list[str]:
    if len(value) > 63:
        return ["must be no more than 63 characters"]
    if not re.fullmatch(LABEL_VALUE, value):
        return ["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character "
                f"(regex used for validation is '{LABEL_VALUE}')"]
    return []
