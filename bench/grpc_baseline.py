"""The ceiling Python's gRPC server puts on the shim: a KV server that does nothing (not a test).

    python bench/grpc_baseline.py [--load l]

Serves etcd's KV service with the shim's generated code on grpc.aio + uvloop, exactly as the shim
does, but every Put answers a constant without touching any store; then runs `etcdctl check perf`
against it (etcd's own write benchmark, a Go client). Whatever this reaches, the shim cannot
exceed: the difference to the shim's figure in kv_bench.py is the cost of the shim's own work.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kv_bench import check_perf  # noqa: E402
from tests.harness import processes  # noqa: E402


def serve(port: int) -> None:
    import grpc
    import uvloop

    from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc

    class ConstantKV(rpc_pb2_grpc.KVServicer):
        async def Put(self, request, context):
            return rpc_pb2.PutResponse(header=rpc_pb2.ResponseHeader(revision=2))

        async def Range(self, request, context):
            return rpc_pb2.RangeResponse(header=rpc_pb2.ResponseHeader(revision=2))

        async def DeleteRange(self, request, context):
            return rpc_pb2.DeleteRangeResponse(header=rpc_pb2.ResponseHeader(revision=2))

    async def main() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(ConstantKV(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", default="l", help="etcdctl check perf load (default: l)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process itself
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    port = processes.free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the baseline server did not start")
        result = check_perf(f"127.0.0.1:{port}", args.load)
    finally:
        server.terminate()
        server.wait(10)
    print(f"grpc.aio baseline, etcdctl check perf --load={args.load}: {result.get('writes_per_s', '-')} writes/s "
          f"({result['verdict']})")
    return 0


def _answers(port: int) -> bool:
    import grpc

    from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=1)
            return True
        except grpc.RpcError:
            return False


if __name__ == "__main__":
    sys.exit(main())
