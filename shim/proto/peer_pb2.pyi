from cosmos_etcd_shim.proto import rpc_pb2 as _rpc_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
