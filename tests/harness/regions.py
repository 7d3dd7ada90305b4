"""A two-region Cosmos DB account for tests, in front of one local Cosmos server (plain http).

Three fault proxies (:mod:`tests.harness.faultproxy`, each on a thread of its own) forward to the
same server: the account's *global* endpoint, the one clients are configured with, and one
*regional* endpoint per region (``REGION_A``, ``REGION_B``). Every proxy answers the database
account read (``GET /``) with the rig's account: ``writableLocations`` = [the write region],
``readableLocations`` = the regions in ``read_order``, each advertised at its proxy's http
address (so that a client's endpoint discovery reaches them), and the consistency level set.
The default read order puts B first: it is what azure-cosmos's default routing reads from while
A is the write region. Each proxy's log tells which requests went through which region.

:meth:`TwoRegionAccount.failover` simulates a service-managed failover: the account names the new
write region, and the old one answers writes with 403 substatus 3 ("write forbidden"), as the
service does; reads there keep working (a secondary is readable), which is why a client must not
keep reading there. Both regions reach the one server: the rig tests routing, not replication.
"""
from __future__ import annotations

import collections

from tests.harness.faultproxy import FaultProxy, Rule, ThreadedFaultProxy
from tests.harness.faultrules import on_proxy

REGION_A = "West Europe"
REGION_B = "North Europe"
GLOBAL = "global"
READS = frozenset({"query", "read"})
WRITES = frozenset({"create", "upsert", "replace", "delete", "patch"})
# What a BoundedStaleness account reports beside its level (the service's defaults).
STALENESS_BOUNDS = {"maxStalenessPrefix": 100000, "maxIntervalInSeconds": 300}


class TwoRegionAccount:
    """Use as a context manager; ``endpoint`` is the global endpoint to give clients."""

    def __init__(self, upstream_port: int, *, consistency: str | None = "Strong", write_region: str = REGION_A,
                 read_order: tuple[str, ...] = (REGION_B, REGION_A)) -> None:
        self.consistency = consistency  # None: the account reports no level
        self.write_region = write_region
        self.read_order = read_order
        self._threads = {name: ThreadedFaultProxy("127.0.0.1", upstream_port) for name in (GLOBAL, REGION_A, REGION_B)}
        self._proxies: dict[str, FaultProxy] = {}

    def __enter__(self) -> TwoRegionAccount:
        try:
            for name, threaded in self._threads.items():
                proxy = self._proxies[name] = threaded.__enter__()
                proxy.rewrite_account = self._rewrite
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self._proxies):
            self._threads[name].__exit__(None, None, None)
            del self._proxies[name]

    @property
    def endpoint(self) -> str:
        return self._proxies[GLOBAL].endpoint

    def _rewrite(self, account: dict) -> dict:
        """The account answer (on the proxies' threads): this rig's regions and consistency."""
        def location(region: str) -> dict:
            return {"name": region, "databaseAccountEndpoint": self._proxies[region].endpoint}

        account = {**account, "writableLocations": [location(self.write_region)],
                   "readableLocations": [location(region) for region in self.read_order]}
        account.pop("userConsistencyPolicy", None)
        if self.consistency is not None:
            policy = {"defaultConsistencyLevel": self.consistency}
            if self.consistency == "BoundedStaleness":
                policy.update(STALENESS_BOUNDS)
            account["userConsistencyPolicy"] = policy
        return account

    def failover(self, to: str) -> None:
        """Make ``to`` the write region; the old write region refuses writes from now on."""
        old = self.write_region
        refusals = [Rule("status", operation=operation, status=403, headers={"x-ms-substatus": "3"}, times=-1)
                    for operation in sorted(WRITES)]
        on_proxy(self._threads[old], lambda proxy: proxy.add(*refusals))
        on_proxy(self._threads[to], lambda proxy: proxy.clear())
        self.write_region = to

    def mark(self) -> dict[str, int]:
        """Where each proxy's log ends now: pass to :meth:`operations` to count what came after."""
        return {name: len(proxy.log) for name, proxy in self._proxies.items()}

    def operations(self, name: str, since: dict[str, int] | None = None) -> collections.Counter[str]:
        """The Cosmos operations (query, read, create, ..., account, other) that went through one
        proxy (``GLOBAL``, ``REGION_A`` or ``REGION_B``), since a :meth:`mark` or from the start."""
        start = since[name] if since else 0
        return collections.Counter(operation for operation, _, _ in self._proxies[name].log[start:])


def data_requests(operations: collections.Counter[str]) -> int:
    """Reads and writes of documents (not account, database or container metadata)."""
    return sum(count for operation, count in operations.items() if operation in READS | WRITES)
