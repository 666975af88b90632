"""Progress for long steps: `==> step` on start, `<== step (12.3 s)` on end.

Steps nest and indent, so a build reads like the pipeline it runs. Everything
goes to stderr; stdout stays for results other programs read.
"""

import contextlib
import logging
import sys
import time

log = logging.getLogger("rackboot")
_depth = 0


def setup(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@contextlib.contextmanager
def step(title: str):
    global _depth
    indent = "  " * _depth
    log.info("%s==> %s", indent, title)
    start = time.monotonic()
    _depth += 1
    try:
        yield
    except BaseException:
        log.info("%s<== %s: failed after %.1f s", indent, title, time.monotonic() - start)
        raise
    finally:
        _depth -= 1
    log.info("%s<== %s (%.1f s)", indent, title, time.monotonic() - start)
