"""Two (or more) elected replicas of one Cosmos container, as the replication tests drive them.

Each replica is a shim process with a peer listener (``elected``), driven through its own gRPC
channel; the helpers ask them who leads and wait for conditions by polling with a deadline.
"""
from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.cosmos_shims import Shim, elected, start_shim
from tests.harness.waiting import poll

RPC_TIMEOUT = 10.0
LEASE_SECONDS = 3.0  # short, so that takeovers in these tests take seconds; the default is 6
# A takeover happens within a lease and a round of the last renewal; the rest is room for a loaded
# machine (the figure itself is printed, not asserted).
TAKEOVER_DEADLINE = 4 * LEASE_SECONDS


@contextlib.contextmanager
def running_pair(workdir: pathlib.Path, cosmos, container: str) -> Iterator[tuple[Shim, Shim]]:
    """Two elected replicas, ``first`` and ``second``, of ``container`` on the Cosmos server; both
    stopped at the end."""
    with contextlib.ExitStack() as stack:
        endpoint = f"http://127.0.0.1:{cosmos.port}"
        shims = []
        for name in ("first", "second"):
            shim = start_shim(workdir, endpoint, container, name, elected(LEASE_SECONDS))
            stack.callback(shim.close)
            shims.append(shim)
        yield shims[0], shims[1]


def status(shim: Shim) -> pb.StatusResponse:
    return shim.maintenance.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT)


def leader_and_follower(first: Shim, second: Shim) -> tuple[Shim, Shim]:
    """Once both replicas name the same leader: (leader, follower)."""
    def agreed():
        a, b = status(first), status(second)
        return a.leader and a.leader == b.leader and (a, b)

    a, _ = poll(agreed, TAKEOVER_DEADLINE, "both replicas name one leader")
    return (first, second) if a.leader == a.header.member_id else (second, first)


def put(shim: Shim, key: bytes, value: bytes = b"v") -> pb.PutResponse:
    return shim.kv.Put(pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT)


def cosmos_requests(shim: Shim) -> float:
    return sum(v for k, v in shim.metrics().items() if k.startswith("cosmos_etcd_cosmos_requests_total{"))
