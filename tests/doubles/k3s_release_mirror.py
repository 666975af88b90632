"""Stands in for the k3s release downloads on GitHub (github.com/k3s-io/k3s/releases); to test fetch-k3s against the real thing, run ./build.py fetch-k3s v1.31.4+k3s1 -o DIR on a machine that reaches GitHub (by hand: the tests have no switch for it; untested here).

An HTTP server serving a directory shaped like one k3s release: binaries
(the k3s stand-in, which says the release's version as `k3s --version`),
air-gap images (random bytes) and sha256sum-ARCH.txt files that, like the
real ones, list more assets than rackboot fetches. Failures can be ordered
per request; tests tamper with the served files in place (Release.dir).
"""

import hashlib
import http.server
import os
import threading
from pathlib import Path

from image import k3s_bundle
from tests.doubles.k3s_standin_bundle import standin_binary


class Release:
    """A release directory served over HTTP, with failures to order."""

    def __init__(self, root: Path, version: str):
        self.root = root
        self.dir = root / version
        self.dir.mkdir(parents=True)
        self.fail_next: list[int] = []       # HTTP statuses for the next requests
        self.requests: list[str] = []
        for arch in k3s_bundle.ARCHES:
            # The binaries are the k3s stand-in, which says its version as k3s
            # does (`k3s --version`): verify runs the build host's one.
            assets = {k3s_bundle.binary_name(arch): standin_binary(version) + f"# {arch}\n".encode(),
                      k3s_bundle.images_name(arch): os.urandom(5000),
                      f"k3s-airgap-images-{arch}.tar.gz": b"not fetched"}
            lines = []
            for name, data in assets.items():
                if name.endswith(".tar.gz"):
                    lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}")   # listed, not served
                    continue
                (self.dir / name).write_bytes(data)
                lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
            (self.dir / k3s_bundle.checksums_name(arch)).write_text("\n".join(lines) + "\n")

    def handler(self, *args, **kwargs):
        release = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                release.requests.append(self.path)
                if release.fail_next:
                    self.send_error(release.fail_next.pop(0))
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        return Handler(*args, directory=str(self.root), **kwargs)

    def serve(self) -> str:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self.server.shutdown()
