"""The identity every response header carries: cluster id, member id, raft term and revision."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from cosmos_etcd_shim.proto.rpc_pb2 import ResponseHeader

# There is no raft: the term is constant. etcd's first term after a single-member bootstrap is 2.
RAFT_TERM = 2


@dataclasses.dataclass(frozen=True)
class ResponseHeaders:
    cluster_id: int
    member_id: int
    current_revision: Callable[[], int]

    def fill(self, header: ResponseHeader) -> None:
        """As etcd's v3rpc header filler: the revision only where the request left none."""
        self.fill_identity(header)
        if not header.revision:
            header.revision = self.current_revision()

    def fill_identity(self, header: ResponseHeader) -> None:
        """Without a revision, as etcd's Cluster service answers."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = RAFT_TERM
