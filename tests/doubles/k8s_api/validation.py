"""What the API server's validation refuses (422 Invalid), for the kinds the
stand-in serves, worded as kubernetes v1.31 words it (pkg/apis/*/validation,
apimachinery's pkg/api/validation and pkg/util/validation):

- names: a DNS-1123 subdomain for most kinds; a DNS-1123 label for
  Namespaces; a DNS-1035 label for Services; a path segment for RBAC objects;
- label keys (qualified names) and values, annotation keys;
- required fields (the OpenAPI schema's `required`, and the container image),
  values outside an enum, a selector that does not select its template;
- Secret and ConfigMap keys; Secret data of more than 1 MiB;
- immutable fields on update: a workload's selector, a Job's template, a
  Service's cluster IP, a Secret's type, the data of an `immutable` Secret
  or ConfigMap and the flag itself.
"""

import re

from .status import FieldError, forbidden_field, invalid, not_supported, required

DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + ")*"
DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
CONFIG_KEY = "[-._a-zA-Z0-9]+"

SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                     "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                     f"validation is '{DNS1123_SUBDOMAIN}')")
LABEL_MESSAGE = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                 "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                 f"validation is '{DNS1123_LABEL}')")
DNS1035_MESSAGE = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                   "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                   f"regex used for validation is '{DNS1035_LABEL}')")
NAME_PART_MESSAGE = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                     "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                     f"validation is '{QUALIFIED_NAME}')")
LABEL_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                       "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value', "
                       f" or '12345', regex used for validation is '{LABEL_VALUE}')")
CONFIG_KEY_MESSAGE = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', "
                      f" or 'KEY_NAME',  or 'key-name', regex used for validation is '{CONFIG_KEY}')")

DNS_LABEL_KINDS = {"Namespace"}
DNS1035_KINDS = {"Service"}
PATH_SEGMENT_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
MAX_SECRET_BYTES = 1024 * 1024


def name_errors(kind: str, name: str) -> list[FieldError]:
    field = "metadata.name"
    if kind in PATH_SEGMENT_KINDS:
        if name in (".", ".."):
            return [invalid(field, name, f"may not be '{name}'")]
        bad = [c for c in ("/", "%") if c in name]
        return [invalid(field, name, f"may not contain '{c}'") for c in bad]
    if kind in DNS_LABEL_KINDS or kind in DNS1035_KINDS:
        pattern, message = (DNS1035_LABEL, DNS1035_MESSAGE) if kind in DNS1035_KINDS else (DNS1123_LABEL, LABEL_MESSAGE)
        errors = [invalid(field, name, "must be no more than 63 characters")] if len(name) > 63 else []
        return errors + ([] if re.fullmatch(pattern, name) else [invalid(field, name, message)])
    errors = [invalid(field, name, "must be no more than 253 characters")] if len(name) > 253 else []
    return errors + ([] if re.fullmatch(DNS1123_SUBDOMAIN, name) else [invalid(field, name, SUBDOMAIN_MESSAGE)])


def qualified_name_errors(field: str, key: str) -> list[FieldError]:
    prefix, slash, name = key.rpartition("/")
    errors = []
    if slash and (not prefix or len(prefix) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, prefix)):
        errors.append(invalid(field, key, "prefix part " + SUBDOMAIN_MESSAGE))
    if not name:
        errors.append(invalid(field, key, "name part must be non-empty"))
    elif len(name) > 63:
        errors.append(invalid(field, key, "name part must be no more than 63 characters"))
    elif not re.fullmatch(QUALIFIED_NAME, name):
        errors.append(invalid(field, key, NAME_PART_MESSAGE))
    return errors


def label_errors(field: str, labels) -> list[FieldError]:
    errors = []
    for key, value in (labels or {}).items():
        errors += qualified_name_errors(field, key)
        value = value or ""
        if len(value) > 63:
            errors.append(invalid(field, value, "must be no more than 63 characters"))
        elif not re.fullmatch(LABEL_VALUE, value):
            errors.append(invalid(field, value, LABEL_VALUE_MESSAGE))
    return errors


def metadata_errors(kind: str, meta: dict, namespaced: bool) -> list[FieldError]:
    errors = name_errors(kind, meta.get("name") or "")
    if namespaced and not meta.get("namespace"):
        errors.append(required("metadata.namespace"))
    errors += label_errors("metadata.labels", meta.get("labels"))
    for key in meta.get("annotations") or {}:
        errors += qualified_name_errors("metadata.annotations", key.lower())
    return errors


def object_errors(kind: str, obj: dict, namespaced: bool, decoded) -> list[FieldError]:
    """Everything validation refuses in obj (a create, or the new object of an update)."""
    errors = metadata_errors(kind, obj.get("metadata") or {}, namespaced)
    errors += [required(path) for path in decoded.required]
    errors += [not_supported(path, value, enum) for path, value, enum in decoded.unsupported
               if path not in ("apiVersion", "kind")]
    spec = obj.get("spec") or {}
    if kind in WORKLOADS:
        errors += workload_errors(kind, spec)
    if kind in ("Secret", "ConfigMap"):
        errors += data_key_errors(obj)
    if kind == "Secret":
        size = sum(len(v or "") * 3 // 4 for v in (obj.get("data") or {}).values())
        if size > MAX_SECRET_BYTES:
            errors.append(FieldError("Too long", "data", f"may not be more than {MAX_SECRET_BYTES} bytes"))
    if kind == "Service":
        errors += service_errors(spec)
    if kind == "Pod":
        errors += [required(f"spec.containers[{i}].image") for i, c in enumerate(spec.get("containers") or [])
                   if not c.get("image")]
    return errors


def workload_errors(kind: str, spec: dict) -> list[FieldError]:
    errors = []
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if kind != "Job":
        selector = spec.get("selector")
        if selector is not None and not (selector.get("matchLabels") or selector.get("matchExpressions")):
            errors.append(invalid("spec.selector", selector, f"empty selector is invalid for {kind.lower()}"))
        match = (selector or {}).get("matchLabels") or {}
        if selector and template and any(labels.get(k) != v for k, v in match.items()):
            errors.append(invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`"))
    if (spec.get("replicas") or 0) < 0:
        errors.append(invalid("spec.replicas", spec["replicas"], "must be greater than or equal to 0"))
    pod = template.get("spec") or {}
    for index, container in enumerate(pod.get("containers") or []):
        if not container.get("image"):
            errors.append(required(f"spec.template.spec.containers[{index}].image"))
        name = container.get("name") or ""
        if name and not re.fullmatch(DNS1123_LABEL, name):
            errors.append(invalid(f"spec.template.spec.containers[{index}].name", name, LABEL_MESSAGE))
    policy = pod.get("restartPolicy", "Always")
    if kind == "Job" and policy not in ("OnFailure", "Never"):
        errors.append(not_supported("spec.template.spec.restartPolicy", policy, ["OnFailure", "Never"]))
    elif kind != "Job" and template and policy != "Always":
        errors.append(not_supported("spec.template.spec.restartPolicy", policy, ["Always"]))
    return errors


def data_key_errors(obj: dict) -> list[FieldError]:
    errors = []
    for section in ("data", "binaryData", "stringData"):
        for key in obj.get(section) or {}:
            if not re.fullmatch(CONFIG_KEY, key) or len(key) > 253:
                errors.append(invalid(f"{section}[{key}]", key, CONFIG_KEY_MESSAGE))
    return errors


def service_errors(spec: dict) -> list[FieldError]:
    errors = []
    kind = spec.get("type", "ClusterIP")
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName" and spec.get("clusterIP") != "None":
        errors.append(required("spec.ports"))
    for index, port in enumerate(ports):
        number = port.get("port")
        if isinstance(number, int) and not 1 <= number <= 65535:
            errors.append(invalid(f"spec.ports[{index}].port", number, "must be between 1 and 65535, inclusive"))
        if len(ports) > 1 and not port.get("name"):
            errors.append(required(f"spec.ports[{index}].name"))
    return errors


def update_errors(kind: str, old: dict, new: dict) -> list[FieldError]:
    """Immutable fields changed by an update."""
    errors = []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job") and old_spec.get("selector") is not None \
            and new_spec.get("selector") != old_spec.get("selector"):
        errors.append(invalid("spec.selector", new_spec.get("selector"), "field is immutable"))
    if kind == "Job" and new_spec.get("template") != old_spec.get("template"):
        errors.append(invalid("spec.template", new_spec.get("template"), "field is immutable"))
    if kind == "Service" and old_spec.get("clusterIP") not in (None, "", "None") \
            and new_spec.get("clusterIP") not in (None, "") and new_spec.get("clusterIP") != old_spec["clusterIP"]:
        errors.append(invalid("spec.clusterIPs[0]", [new_spec["clusterIP"]], "may not change once set"))
    if kind == "Secret" and (new.get("type") or "Opaque") != (old.get("type") or "Opaque"):
        errors.append(invalid("type", new.get("type") or "Opaque", "field is immutable"))
    if kind in ("Secret", "ConfigMap") and old.get("immutable"):
        if not new.get("immutable"):
            errors.append(forbidden_field("immutable", "field is immutable when `immutable` is set"))
        for section in ("data", "binaryData"):
            if (new.get(section) or {}) != (old.get(section) or {}):
                errors.append(forbidden_field(section, "field is immutable when `immutable` is set"))
    return errors
