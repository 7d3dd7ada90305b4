"""This member's identity: stable cluster and member ids kept in the data directory.

etcd derives its ids when the cluster bootstraps and keeps them for life; the shim draws them at
random on first start and keeps them in ``member.json`` beside the data.
"""
from __future__ import annotations

import dataclasses
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
