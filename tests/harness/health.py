"""Asking the shim's (or etcd's) HTTP endpoints on --listen-metrics-urls: ``/health``, ``/livez``,
``/readyz``, as a kubelet probe would (plain HTTP GET by default; an error status is an answer)."""
from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request

# The headers tests compare between etcd and the shim.
COMPARED_HEADERS = ("Content-Type", "X-Content-Type-Options", "Allow")


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # only COMPARED_HEADERS
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def ask(port: int, path: str, method: str = "GET") -> Answer:
    """One request to http://127.0.0.1:PORT/PATH; its status, compared headers and body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        response = urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as e:
        response = e
    with response:
        headers = {name: response.headers[name] for name in COMPARED_HEADERS if name in response.headers}
        return Answer(response.status, headers, response.read())
