"""Benchmark TLS, mutual TLS and authentication: the shim against a real etcd 3.5 on this machine (not a test).

    python bench/security_bench.py [--quick] [--out results.json] [--servers etcd,shim]
                                   [--configs plain,tls,mtls,auth] [--clients 16] [--duration 10]

Certificates come from a trustme CA: a server certificate for 127.0.0.1 and a client certificate.
Each configuration gets a fresh etcd and a fresh shim (temporary data dirs, started by
tests/harness/processes.py) with the same flags, one after the other, so that both meet the same
machine conditions; each server's writes are flushed (sync) once it stops, before the next starts:

  plain  http://
  tls    https:// with --cert-file/--key-file; the clients verify the server against the CA
  mtls   tls plus --trusted-ca-file and --client-cert-auth; the clients present their certificate
  auth   http:// with auth enabled: root, and a user whose one role may read and write bench/;
         every request carries that user's simple token and is checked against its permissions

  a. put throughput and p50/p99 latency with N concurrent Python gRPC clients over 4 connections
     (kv_bench.py's load; connections are opened before the clock starts, so TLS costs its record
     encryption, not handshakes), and each configuration relative to the same server's plain run;
  b. auth: Authenticate calls/s with concurrent clients; both servers hash at etcd's default bcrypt
     cost 10 (--bcrypt-cost 10), and the password check dominates each call;
  c. mtls: `etcdctl check perf --load=s` over mutual TLS (a Go client; 60 s a server, skipped by --quick).

Prints a markdown table (etcd, shim, shim/etcd) and writes the same figures as JSON to --out.
The load generator is one Python process on the same machine, and does the client side of TLS:
compare the ratios, and read the absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import trustme  # noqa: E402

from cosmos_etcd_shim.proto import auth_pb2, rpc_pb2, rpc_pb2_grpc  # noqa: E402
from bench.kv_bench import check_perf, load, memory, mib  # noqa: E402
from bench.report import lookup, new_results, percentile, publish, ratio_table, ratios, stop_flushed  # noqa: E402
from tests.harness import processes  # noqa: E402
from tests.harness.differential import prefix_end  # noqa: E402

CONFIGS = ("plain", "tls", "mtls", "auth")
BCRYPT = ["--bcrypt-cost", "10"]  # etcd's default, given to both so that neither depends on the other's
USER, ROLE, PREFIX = "bench", "bench-prefix", b"bench/"
ROOT_PASSWORD, USER_PASSWORD = "bench-root-pw", "bench-user-pw"  # throwaway servers, never printed


@dataclasses.dataclass
class Pki:
    """A trustme CA's files: server and client certificates, and the flags and credentials using them."""

    directory: pathlib.Path

    @classmethod
    def make(cls, directory: pathlib.Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        for name, issued in (("server", ca.issue_cert("127.0.0.1", "localhost")),
                             ("client", ca.issue_cert("bench-client", common_name="bench-client"))):
            issued.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
            issued.private_key_pem.write_to_path(str(directory / f"{name}-key.pem"))
        return cls(directory)

    def file(self, name: str) -> str:
        return str(self.directory / name)

    def server_flags(self, config: str) -> list[str]:
        flags = {"tls": ["--cert-file", self.file("server.pem"), "--key-file", self.file("server-key.pem")]}
        flags["mtls"] = [*flags["tls"], "--trusted-ca-file", self.file("ca.pem"), "--client-cert-auth"]
        return flags.get(config, [])

    def credentials(self, config: str) -> grpc.ChannelCredentials | None:
        if config not in ("tls", "mtls"):
            return None
        read = lambda name: (self.directory / name).read_bytes()  # noqa: E731
        if config == "tls":
            return grpc.ssl_channel_credentials(read("ca.pem"))
        return grpc.ssl_channel_credentials(read("ca.pem"), read("client-key.pem"), read("client.pem"))

    def etcdctl_flags(self) -> list[str]:
        return [f"--cacert={self.file('ca.pem')}", f"--cert={self.file('client.pem')}",
                f"--key={self.file('client-key.pem')}"]


def start_server(kind: str, config: str, pki: Pki, workdir: pathlib.Path) -> processes.Server:
    flags = [*pki.server_flags(config), *BCRYPT]
    scheme = "https" if config in ("tls", "mtls") else "http"
    probe = (lambda: pki.credentials(config)) if scheme == "https" else None
    if kind == "etcd":
        return processes.start_etcd(workdir / kind, flags, scheme=scheme, credentials=probe)
    return processes.start_shim(workdir / kind, extra_args=[*flags, "--log-level", "warn"], scheme=scheme,
                                credentials=probe)


async def enable_auth(endpoint: str) -> str:
    """root, a user with one role that may read and write PREFIX, auth enabled; the user's token."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        auth = rpc_pb2_grpc.AuthStub(channel)
        await auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password=ROOT_PASSWORD), timeout=30)
        await auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=30)
        await auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name=ROLE), timeout=30)
        permission = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=PREFIX,
                                         range_end=prefix_end(PREFIX))
        await auth.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name=ROLE, perm=permission), timeout=30)
        await auth.UserAdd(rpc_pb2.AuthUserAddRequest(name=USER, password=USER_PASSWORD), timeout=30)
        await auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user=USER, role=ROLE), timeout=30)
        await auth.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=30)
        reply = await auth.Authenticate(rpc_pb2.AuthenticateRequest(name=USER, password=USER_PASSWORD), timeout=30)
        return reply.token


async def authentications(endpoint: str, clients: int, duration: float) -> dict:
    """`clients` concurrent Authenticate loops (the bench user's password) for `duration` seconds."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        auth = rpc_pb2_grpc.AuthStub(channel)
        request = rpc_pb2.AuthenticateRequest(name=USER, password=USER_PASSWORD)
        latencies: list[float] = []
        stop_at = time.monotonic() + duration

        async def client() -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                await auth.Authenticate(request, timeout=60)
                latencies.append(time.perf_counter() - t0)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {"calls": len(latencies), "seconds": round(elapsed, 2), "calls_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1), "p99_ms": round(percentile(latencies, 99) * 1000, 1)}


def bench_server(kind: str, config: str, pki: Pki, args, workdir: pathlib.Path) -> dict:
    result: dict = {}
    server = start_server(kind, config, pki, workdir)
    try:
        metadata = None
        if config == "auth":
            metadata = (("token", asyncio.run(enable_auth(server.endpoint))),)
        for clients in args.clients:
            print(f"[{kind} {config}] put x{clients} clients, {args.duration}s", file=sys.stderr)
            result[f"put_{clients}"] = asyncio.run(load(server.endpoint, "put", clients, args.duration, args.value_size,
                                                        args.keyspace, credentials=pki.credentials(config),
                                                        metadata=metadata))
            if failed := result[f"put_{clients}"]["errors"]:
                print(f"[{kind} {config}] {failed} puts failed (not counted)", file=sys.stderr)
        result["memory_kib"] = memory(server.process.pid)
        if config == "auth":
            print(f"[{kind} auth] Authenticate x{args.auth_clients} clients, {args.auth_duration}s", file=sys.stderr)
            result["authenticate"] = asyncio.run(authentications(server.endpoint, args.auth_clients, args.auth_duration))
        if config == "mtls" and args.check_perf:
            print(f"[{kind} mtls] etcdctl check perf --load=s (60 s)", file=sys.stderr)
            result["check_perf_s"] = check_perf(server.url, "s", pki.etcdctl_flags())
    finally:
        result["exit_code"] = stop_flushed(server)
    return result


def rows(results: dict, args) -> list[tuple[str, float | None, float | None]]:
    def both(*path):
        return lookup(results, "etcd", *path), lookup(results, "shim", *path)

    def relative(config: str, *path):
        """config's figure over the same server's plain figure."""
        return tuple(None if None in (value, plain) or not plain else round(value / plain, 3)
                     for value, plain in zip(both(config, *path), both("plain", *path)))

    out = []
    for config in args.configs:
        for clients in args.clients:
            put = f"put_{clients}"
            out += [(f"{config}, put x{clients}: ops/s", *both(config, put, "ops_per_s")),
                    (f"{config}, put x{clients}: p50 ms", *both(config, put, "p50_ms")),
                    (f"{config}, put x{clients}: p99 ms", *both(config, put, "p99_ms"))]
            if config != "plain" and "plain" in args.configs:
                out += [(f"{config} ÷ plain, put x{clients}: ops/s", *relative(config, put, "ops_per_s")),
                        (f"{config} ÷ plain, put x{clients}: p50 ms", *relative(config, put, "p50_ms"))]
        out.append((f"{config}: RSS after the puts (MiB)",
                    *(mib(value) for value in both(config, "memory_kib", "VmRSS"))))
    if "auth" in args.configs:
        out += [(f"Authenticate x{args.auth_clients} (bcrypt cost 10): calls/s", *both("auth", "authenticate", "calls_per_s")),
                (f"Authenticate x{args.auth_clients}: p50 ms", *both("auth", "authenticate", "p50_ms"))]
    if "mtls" in args.configs and args.check_perf:
        out += [("mtls, check perf --load=s: writes/s", *both("mtls", "check_perf_s", "writes_per_s")),
                ("mtls, check perf --load=s: slowest request (s)", *both("mtls", "check_perf_s", "slowest_s"))]
    return out


def table(results: dict, args) -> str:
    lines = ratio_table(rows(results, args))
    for kind in ("etcd", "shim"):
        verdict = lookup(results, kind, "mtls", "check_perf_s", "verdict")
        if verdict:
            lines.append(f"\n`etcdctl check perf --load=s` over mutual TLS on {kind}: **{verdict}**")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, no check perf (under a minute and a half)")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this path")
    parser.add_argument("--servers", default="etcd,shim", help="comma-separated: etcd,shim")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {','.join(CONFIGS)}")
    parser.add_argument("--clients", default="16", help="comma-separated concurrent put client counts")
    parser.add_argument("--duration", type=float, help="seconds per put run (default 10, quick 3)")
    parser.add_argument("--auth-clients", type=int, default=4, help="concurrent Authenticate loops")
    parser.add_argument("--auth-duration", type=float, help="seconds of Authenticate calls (default 10, quick 3)")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--keyspace", type=int, default=1000, help="distinct keys the put runs use")
    parser.add_argument("--check-perf", action=argparse.BooleanOptionalAction, default=None,
                        help="run etcdctl check perf --load=s over mutual TLS (default: on, off with --quick)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.configs = [c for c in args.configs.split(",") if c]
    if unknown := set(args.configs) - set(CONFIGS):
        parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.auth_duration = args.auth_duration or (3.0 if args.quick else 10.0)
    if args.check_perf is None:
        args.check_perf = not args.quick
    servers = [s for s in args.servers.split(",") if s]

    started = time.monotonic()
    results = new_results({"quick": args.quick, "configs": args.configs, "clients": args.clients,
                           "duration_s": args.duration, "auth_clients": args.auth_clients,
                           "auth_duration_s": args.auth_duration, "value_size": args.value_size,
                           "keyspace": args.keyspace, "check_perf": args.check_perf}, args.out)
    with tempfile.TemporaryDirectory(prefix="security-bench-") as tmp:
        pki = Pki.make(pathlib.Path(tmp) / "pki")
        for config in args.configs:  # etcd and the shim back to back for each configuration
            for kind in servers:
                results.setdefault(kind, {})[config] = bench_server(kind, config, pki, args,
                                                                    pathlib.Path(tmp) / config)
    results["ratios"] = ratios(rows(results, args))
    publish(results, table(results, args), started,
            f"load average {results['machine']['load_average'][0]:.2f} at the start; the load generator is one "
            "Python process on the same machine", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
