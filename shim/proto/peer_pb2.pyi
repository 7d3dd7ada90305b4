from cosmos_etcd_shim.proto import rpc_pb2 as _rpc_pb2
from cosmos_etcd_shim.proto import storage_pb2 as _storage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadIndexRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadIndexResponse(_message.Message):
    __slots__ = ("header", "compact_revision")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    header: _rpc_pb2.ResponseHeader
    compact_revision: int
    def __init__(self, header: _Optional[_Union[_rpc_pb2.ResponseHeader, _Mapping]] = ..., compact_revision: _Optional[int] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FollowResponse(_message.Message):
    __slots__ = ("committed", "revisions")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    committed: int
    revisions: _containers.RepeatedCompositeFieldContainer[_storage_pb2.Revision]
    def __init__(self, committed: _Optional[int] = ..., revisions: _Optional[_Iterable[_Union[_storage_pb2.Revision, _Mapping]]] = ...) -> None: ...
