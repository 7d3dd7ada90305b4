from cosmos_etcd_shim.proto import auth_pb2 as _auth_pb2
from cosmos_etcd_shim.proto import kv_pb2 as _kv_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Revision(_message.Message):
    __slots__ = ("revision", "events")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    events: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Event]
    def __init__(self, revision: _Optional[int] = ..., events: _Optional[_Iterable[_Union[_kv_pb2.Event, _Mapping]]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("id", "ttl", "deadline_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    ttl: int
    deadline_ms: int
    def __init__(self, id: _Optional[int] = ..., ttl: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class AuthState(_message.Message):
    __slots__ = ("enabled", "revision", "users", "roles")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    revision: int
    users: _containers.RepeatedCompositeFieldContainer[_auth_pb2.User]
    roles: _containers.RepeatedCompositeFieldContainer[_auth_pb2.Role]
    def __init__(self, enabled: _Optional[bool] = ..., revision: _Optional[int] = ..., users: _Optional[_Iterable[_Union[_auth_pb2.User, _Mapping]]] = ..., roles: _Optional[_Iterable[_Union[_auth_pb2.Role, _Mapping]]] = ...) -> None: ...
