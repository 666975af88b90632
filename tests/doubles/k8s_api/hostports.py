"""A node's side of ServiceLB in the stand-in: what its kubelet, containerd
and CNI's portmap plugin make of the svclb pods bound to it. Each running
svclb pod's TCP host ports listen on every address of the node (the pretend
machine's own network namespace), and a request there gets the answer the
Service gives (traefik.answer, asked through `answer`); a port no running
svclb pod of this node holds is closed, so the node refuses connections on
it. UDP host ports are not opened (nothing rackboot serves uses one)."""

import http.server
import threading
import time
from collections.abc import Callable

from .servicelb import LB_NAMESPACE, SVC_NAME, SVC_NAMESPACE

# (service namespace, service name, port, Host header, path) -> (HTTP status, body)
Answer = Callable[[str, str, int, str, str], tuple[int, str]]


def held_ports(pods: list[dict], node: str) -> dict[int, tuple[str, str]]:
    """TCP host port -> (namespace, name) of its Service, for the running svclb pods on node."""
    held = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if (pod["metadata"].get("namespace") != LB_NAMESPACE or SVC_NAME not in labels
                or pod["spec"].get("nodeName") != node or (pod.get("status") or {}).get("phase") != "Running"):
            continue
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port.get("hostPort") and port.get("protocol", "TCP") == "TCP":
                    held[port["hostPort"]] = (labels[SVC_NAMESPACE], labels[SVC_NAME])
    return held


class _Handler(http.server.BaseHTTPRequestHandler):
    service: tuple[str, str]
    port: int
    answer: Answer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        try:
            code, body = self.answer(*self.service, self.port, self.headers.get("Host", ""), self.path.split("?")[0])
        except Exception as err:      # the backend could not be asked: traefik's answer then
            code, body = 502, f"Bad Gateway: {err}\n"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_GET


class HostPorts:
    def __init__(self, node: str, answer: Answer, log: Callable[[str], None]):
        self.node = node
        self.answer = answer
        self.log = log
        self.listening: dict[int, tuple[tuple[str, str], http.server.ThreadingHTTPServer]] = {}

    def sync(self, pods: list[dict]) -> None:
        """Listen on exactly the ports the node's running svclb pods hold."""
        held = held_ports(pods, self.node)
        for port, (service, server) in list(self.listening.items()):
            if held.get(port) != service:
                server.shutdown()
                server.server_close()
                del self.listening[port]
                self.log(f"svclb: port {port} of {service[0]}/{service[1]} closed on node {self.node}")
        for port, service in held.items():
            if port not in self.listening:
                self._listen(port, service)

    def _listen(self, port: int, service: tuple[str, str]) -> None:
        handler = type("SvclbHandler", (_Handler,), {"service": service, "port": port,
                                                     "answer": staticmethod(self.answer)})
        try:
            server = http.server.ThreadingHTTPServer(("0.0.0.0", port), handler)
        except OSError as err:
            self.log(f"svclb: cannot listen on port {port} for {service[0]}/{service[1]}: {err}")
            return
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.listening[port] = (service, server)
        self.log(f"svclb: {service[0]}/{service[1]} listens on port {port} of node {self.node}")


def follow(node: str, list_pods: Callable[[], list[dict]], answer: Answer, log: Callable[[str], None]) -> None:
    """The node's kubelet following its svclb pods (a watch, here a poll every 0.2 s)."""
    ports = HostPorts(node, answer, log)
    while True:
        try:
            ports.sync(list_pods())
        except (OSError, ValueError) as err:      # the API not reachable now: the next poll
            log(f"svclb: cannot list the pods of node {node}: {err}")
        time.sleep(0.2)
