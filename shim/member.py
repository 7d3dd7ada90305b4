"""This member's identity: stable cluster and member ids.

etcd derives its ids when the cluster bootstraps and keeps them for life. On the embedded store
the shim draws them at random on first start and keeps them in ``member.json`` beside the data.
Replicas sharing a Cosmos container are one cluster: the cluster id derives from the container,
and each member id from the cluster id and the member's ``--name`` (unique per replica, e.g. the
pod name), so a restarted replica keeps its id.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import secrets

MEMBER_FILE = "member.json"


@dataclasses.dataclass(frozen=True)
class MemberIdentity:
    cluster_id: int
    member_id: int


def load_or_create(data_dir: str | os.PathLike) -> MemberIdentity:
    path = pathlib.Path(data_dir) / MEMBER_FILE
    if path.exists():
        return MemberIdentity(**json.loads(path.read_text()))
    identity = MemberIdentity(cluster_id=_nonzero_id(), member_id=_nonzero_id())
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(dataclasses.asdict(identity)))
    os.replace(temporary, path)
    return identity


def _nonzero_id() -> int:
    return secrets.randbits(63) or 1


def for_shared_log(name: str, *container_path: str) -> MemberIdentity:
    cluster_id = _hashed_id("/".join(container_path))
    return MemberIdentity(cluster_id=cluster_id, member_id=_hashed_id(f"{cluster_id:x}/{name}"))


def _hashed_id(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1 or 1
