"""Stands in for the k3s release downloads on GitHub (github.com/k3s-io/k3s/releases); to test fetch-k3s against the real thing, run ./build.py fetch-k3s v1.31.4+k3s1 -o DIR on a machine that reaches GitHub (by hand: the tests have no switch for it; untested here).

An HTTP server serving a directory shaped like one k3s release: binaries
(the k3s stand-in, which says the release's version as `k3s --version`),
air-gap images (random bytes) and sha256sum-ARCH.txt files that, like the
real ones, list more assets than rackboot fetches. Failures can be ordered
per request; tests tamper with the served files in place (Release.dir).

It also answers as k3s's channel server (update.k3s.io, rancher's
channelserver) does: GET CHANNELS_PATH/NAME of a channel it knows is a 302
whose Location is the release's tag page on GitHub (here TAG_PATH/VERSION,
which answers 200 with a page, as GitHub does); an unknown channel is a 404.
Tests set Release.channels (name -> what the Location's last segment says,
which may be anything, to play a broken or hostile server).
"""

import hashlib
import http.server
import os
import threading
from pathlib import Path

from image import k3s_bundle
from tests.doubles.k3s_standin_bundle import standin_binary

CHANNELS_PATH = "/v1-release/channels"
TAG_PATH = "/k3s-io/k3s/releases/tag"


class Release:
    """A release directory served over HTTP, with failures to order."""

    def __init__(self, root: Path, version: str):
        self.root = root
        self.dir = root / version
        self.dir.mkdir(parents=True)
        self.fail_next: list[int] = []       # HTTP statuses for the next requests
        self.requests: list[str] = []
        self.channels: dict[str, str] = {"stable": version, "latest": version}
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
                if self.path.startswith(CHANNELS_PATH + "/"):
                    self._channel(self.path[len(CHANNELS_PATH) + 1:])
                elif self.path.startswith(TAG_PATH + "/"):
                    self._page(200, b"<html>release</html>")
                else:
                    super().do_GET()

            def _channel(self, name: str) -> None:
                if name not in release.channels:
                    self.send_error(404)
                    return
                self.send_response(302)
                self.send_header("Location", f"{release.url}{TAG_PATH}/{release.channels[name]}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _page(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler(*args, directory=str(self.root), **kwargs)

    def serve(self) -> str:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.url

    @property
    def channel_url(self) -> str:
        return self.url + CHANNELS_PATH

    def stop(self) -> None:
        self.server.shutdown()
