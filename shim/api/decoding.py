"""Requests that do not decode: refused as etcd refuses them, without a traceback in the log.

gRPC for Python decodes a request before the servicer runs and answers a failure with UNKNOWN
("Unexpected <class 'DecodeError'>") and an error-level traceback in the log, so that any client
could fill the log by sending garbage. etcd (grpc-go) answers INTERNAL "grpc: error unmarshalling
request: …" (unary methods) or "grpc: failed to unmarshal the received message …" (streaming ones).
:class:`DecodeErrors` makes every method take the raw bytes and decode them itself, answering
those statuses.

The two decoders differ. Go's refuses a known field sent with another wire type (and tag 0),
where protobuf for Python keeps it as an unknown field, so that a Txn with a garbled compare would
be applied without that compare: :func:`decode_strictly` refuses it too. Protobuf for Python
refuses messages nested more than 100 levels deep (a Txn nested about 50 times), which Go's
accepts: those get the same INTERNAL answer.
"""
from __future__ import annotations

import inspect

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet


class DecodeErrors(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # by method, made once each

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method not in self._handlers:
            handler = await continuation(handler_call_details)
            if handler is None:  # an unknown method: not remembered, names are the client's to invent
                return None
            self._handlers[method] = _decoding_itself(handler)
        return self._handlers[method]


def decode_strictly(decode, raw: bytes) -> Message:
    """``decode(raw)``, refusing what Go's decoder refuses: known fields of another wire type."""
    message = decode(raw)
    message.DiscardUnknownFields()
    if message.ByteSize() != len(raw):  # there were unknown fields (or an unusual encoding): look closer
        _refuse_wrong_wire_types(decode(raw))
    return message


def _refuse_wrong_wire_types(message: Message) -> None:
    for unknown in UnknownFieldSet(message):
        if unknown.field_number == 0:  # protobuf for Python lets an over-long encoding of tag 0 through
            raise DecodeError(f"proto: {message.DESCRIPTOR.name}: illegal tag 0 (wire type {unknown.wire_type})")
        known = message.DESCRIPTOR.fields_by_number.get(unknown.field_number)
        if known is not None:
            go_name = "".join(part[:1].upper() + part[1:] for part in known.name.split("_"))
            raise DecodeError(f"proto: wrong wireType = {unknown.wire_type} for field {go_name}")
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        for item in value if field.is_repeated else (value,):
            _refuse_wrong_wire_types(item)


def _decoding_itself(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method, taking raw bytes and decoding them itself (each message of a stream)."""
    deserializer = handler.request_deserializer
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    behaviour = getattr(handler, kind)
    if deserializer is None or not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        return handler  # nothing to decode, or a sync method: left to gRPC

    def decode(raw: bytes) -> Message:
        return decode_strictly(deserializer, raw)

    async def request_of(received, context: grpc.aio.ServicerContext):
        if handler.request_streaming:
            return _decoded(received, decode, context)
        try:
            return decode(received)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INTERNAL, _undecodable(kind, e))

    # gRPC tells response streams written with context.write (coroutines) from generators: keep the kind.
    if inspect.isasyncgenfunction(behaviour):
        async def method(received, context: grpc.aio.ServicerContext):
            async for response in behaviour(await request_of(received, context), context):
                yield response
    else:
        async def method(received, context: grpc.aio.ServicerContext):
            return await behaviour(await request_of(received, context), context)

    make_handler = getattr(grpc, f"{kind}_rpc_method_handler")
    return make_handler(method, response_serializer=handler.response_serializer)


async def _decoded(received, decode, context: grpc.aio.ServicerContext):
    async for raw in received:
        try:
            message = decode(raw)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INTERNAL, _undecodable("stream_stream", e))
        yield message


def _undecodable(kind: str, error: DecodeError) -> str:
    if kind == "unary_unary":
        return f"grpc: error unmarshalling request: {error}"
    return f"grpc: failed to unmarshal the received message {error}"  # sic: grpc-go has no colon here
