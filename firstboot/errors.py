"""Errors that reach the user. Each carries what went wrong and, where there
is one, what to do about it; the command line prints them without a traceback
(unless --debug) and maps them to exit statuses."""


class RackbootError(Exception):
    """Something failed while doing the work (exit status 1)."""

    exit_status = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class BadInput(RackbootError):
    """The user's input is wrong; nothing was done (exit status 2)."""

    exit_status = 2


class ProfileError(BadInput):
    """One or more problems in rack profiles, each as `file: path: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{count} in rack profiles:\n  " + "\n  ".join(problems))
