"""The API server's answers when it refuses: metav1.Status bodies, worded as
k8s.io/apimachinery/pkg/api/errors and pkg/util/validation/field word them."""

import json


class ApiError(Exception):
    def __init__(self, code: int, reason: str | None, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details

    def status(self) -> dict:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": str(self), "code": self.code}
        if self.reason:      # an internal error (500) has none
            status["reason"] = self.reason
        if self.details:
            status["details"] = self.details
        return status


def qualified(name: str, group: str) -> str:
    """A GroupResource or GroupKind as the API server prints it: deployments.apps, configmaps."""
    return f"{name}.{group}" if group else name


def details(name: str | None, group: str, kind: str, causes: list | None = None) -> dict:
    out = {}
    if name:
        out["name"] = name
    if group:
        out["group"] = group
    out["kind"] = kind
    if causes:
        out["causes"] = causes
    return out


def forbidden(plural: str, name: str, why: str, group: str = "", causes: list | None = None) -> ApiError:
    """errors.NewForbidden (admission plugins' refusals)."""
    what = qualified(plural, group)
    message = f'{what} "{name}" is forbidden: {why}' if name else f"{what} is forbidden: {why}"
    return ApiError(403, "Forbidden", message, details(name, group, plural, causes))


def not_found(plural: str, name: str, group: str = "") -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(plural, group)} "{name}" not found', details(name, group, plural))


def conflict(plural: str, name: str, why: str, group: str = "") -> ApiError:
    """errors.NewConflict: an operation that cannot be done to the object as it is."""
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
                    details(name, group, plural))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def internal(message: str) -> ApiError:
    """A plain error the API server did not classify: 500, no reason (responsewriters.ErrorToAPIStatus)."""
    return ApiError(500, None, message)


# --- field errors (field.Error) ------------------------------------------------

def go_value(value) -> str:
    """A value as field.Invalid prints it (%#v for Go values; strings quoted)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}"
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "map[string]string{" + ", ".join(f"{json.dumps(k)}:{json.dumps(v)}"
                                                 for k, v in sorted(value.items())) + "}"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class FieldError:
    """One problem at one field path: (field.ErrorType, path, value, detail)."""

    REASONS = {"Required value": "FieldValueRequired", "Invalid value": "FieldValueInvalid",
               "Forbidden": "FieldValueForbidden", "Unsupported value": "FieldValueNotSupported",
               "Too long": "FieldValueTooLong", "Duplicate value": "FieldValueDuplicate"}

    def __init__(self, kind: str, field: str, detail: str = "", value=None):
        self.kind, self.field, self.detail, self.value = kind, field, detail, value

    def body(self) -> str:
        text = self.kind
        if self.kind in ("Invalid value", "Unsupported value", "Duplicate value"):
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict:
        return {"reason": self.REASONS[self.kind], "message": self.body(), "field": self.field}


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("Required value", field, detail)


def invalid(field: str, value, detail: str) -> FieldError:
    return FieldError("Invalid value", field, detail, value)


def forbidden_field(field: str, detail: str) -> FieldError:
    return FieldError("Forbidden", field, detail)


def not_supported(field: str, value, supported) -> FieldError:
    return FieldError("Unsupported value", field, "supported values: " + ", ".join(json.dumps(s) for s in supported),
                      value)


def invalid_object(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """errors.NewInvalid: 422, `KIND "NAME" is invalid: ERR` or `[ERR, ERR]`."""
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return ApiError(422, "Invalid", f'{qualified(kind, group)} "{name}" is invalid: {text}',
                    details(name, group, kind, [e.cause() for e in errors]))
