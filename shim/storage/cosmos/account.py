"""The Cosmos DB account as the shim needs it: its default consistency level, checked once at start,
and its regions, from which the client's routing options are derived (see ``client.py``).

A linearizable etcd read is "read the log head, wait until the index has applied it": the head
read must see every write acknowledged before it. Of Cosmos's five levels only Strong and
BoundedStaleness give that (read from the write region); Session, ConsistentPrefix and Eventual
let a read miss the latest write, so the shim refuses them at start (:class:`AccountConsistencyError`,
one line for the user). BoundedStaleness on a multi-region account is accepted with a warning: a
service-managed failover promotes a secondary that may lag up to the staleness bound, so the last
acknowledged revisions can be lost (Strong loses none). An account that reports no level (no such
service exists; some stand-ins might) is logged at info as unknown and not refused: the check can
only judge what the account says.
"""
from __future__ import annotations

import dataclasses
import logging
import urllib.parse
from typing import Any

from azure.cosmos.documents import DatabaseAccount

from cosmos_etcd_shim.storage.base import StorageError

logger = logging.getLogger(__name__)

LINEARIZABLE_LEVELS = ("Strong", "BoundedStaleness")


class AccountConsistencyError(StorageError):
    """The account's default consistency level cannot give linearizable reads."""


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    endpoint: str


@dataclasses.dataclass(frozen=True)
class AccountProperties:
    """What one database account read (``GET /``) says about consistency and regions."""

    consistency: str | None  # the account's default level; None when not reported
    consistency_policy: dict[str, Any]  # as reported: with BoundedStaleness, its bounds
    write_regions: tuple[Region, ...]
    read_regions: tuple[Region, ...]

    @classmethod
    def of(cls, account: DatabaseAccount) -> AccountProperties:
        policy = dict(account.ConsistencyPolicy or {})
        return cls(consistency=policy.get("defaultConsistencyLevel") or None, consistency_policy=policy,
                   write_regions=_regions(account.WritableLocations),
                   read_regions=_regions(account.ReadableLocations))

    @property
    def region_names(self) -> list[str]:
        return sorted({region.name for region in (*self.write_regions, *self.read_regions)})

    @property
    def write_region(self) -> str | None:
        return self.write_regions[0].name if self.write_regions else None

    def check_consistency(self) -> None:
        """Refuse a level that cannot give linearizable reads; log what was found."""
        fields = {"consistency": self.consistency, "write_region": self.write_region, "regions": self.region_names}
        if self.consistency is None:
            logger.info("the Cosmos account reports no default consistency level: not checked", extra=fields)
            return
        level = next((name for name in LINEARIZABLE_LEVELS if name.lower() == self.consistency.lower()), None)
        if level is None:
            raise AccountConsistencyError(
                f"the Cosmos account's default consistency level is {self.consistency}: a linearizable etcd "
                f"needs reads that see the latest write, which only Strong or BoundedStaleness give; set the "
                f"account's default consistency level to Strong (or BoundedStaleness)")
        if level == "BoundedStaleness" and len(self.region_names) > 1:
            logger.warning(
                "BoundedStaleness on a multi-region Cosmos account: a service-managed failover can lose the last "
                "acknowledged revisions (up to the staleness bound); Strong loses none (README: RPO and RTO per "
                "configuration)",
                extra={**fields, "max_staleness_prefix": self.consistency_policy.get("maxStalenessPrefix"),
                       "max_interval_seconds": self.consistency_policy.get("maxIntervalInSeconds")})
            return
        logger.info("Cosmos account consistency checked", extra=fields)

    def routing_options(self, endpoint: str) -> dict[str, Any]:
        """``CosmosClient`` options that send every request to the account's current write region.

        Every region the account lists is excluded: the SDK then routes reads to its "primary/hub"
        region, the first write region of its latest account read, so it follows a failover (see
        ``client.py``). Endpoint discovery stays on, except for a plain-http endpoint (a local test
        server) whose account advertises addresses of another scheme, which the client could not
        reach: the plain local server advertises https for its http port. The two-region test rig
        advertises http addresses, so discovery, regions and failover work there as in production.
        """
        scheme = urllib.parse.urlsplit(endpoint).scheme
        advertised = {urllib.parse.urlsplit(region.endpoint).scheme
                      for region in (*self.write_regions, *self.read_regions)}
        if scheme == "http" and advertised - {"http"}:
            logger.warning("plain-http Cosmos endpoint whose account advertises other addresses: endpoint "
                           "discovery off, every request to this endpoint (local test servers only)",
                           extra={"endpoint": endpoint})
            return {"enable_endpoint_discovery": False}
        logger.info("every Cosmos request goes to the account's write region, reads included",
                    extra={"write_region": self.write_region, "excluded_locations": self.region_names})
        return {"excluded_locations": self.region_names}


def _regions(locations: list[dict[str, str]]) -> tuple[Region, ...]:
    # A location's name is empty while a failover is under way: the SDK skips those too.
    return tuple(Region(location["name"], location.get("databaseAccountEndpoint", ""))
                 for location in locations if location.get("name"))
