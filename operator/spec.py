"""The CosmosEtcdCluster spec as the operator reads it: typed, defaulted and validated.

The CRD's OpenAPI schema rejects most bad input at admission; this module is the second line
for what a schema cannot say (a throughput that is not a multiple of Cosmos's step, regions
listed twice, an account name Azure would refuse) and for objects that reached the cluster
before the CRD was installed (or changed). Every problem becomes an :class:`InvalidSpec` whose
message names the field, so that the operator can put it in a condition and stop retrying.

Consistency and failover (issue 11): the shim reads its log in the write region, so only Strong and
BoundedStaleness are accepted (the shim refuses weaker levels when it starts). Without a level, a
multi-region account gets Strong: a service-managed failover then loses no acknowledged revision. A
single-region account keeps BoundedStaleness, the default so far: within one region Azure commits
writes of both levels to a majority of the region's replicas and reads both from a minority quorum
at the same RU charge, so Strong would buy nothing there and would only change existing accounts.
BoundedStaleness on a multi-region account with automatic failover can lose up to the staleness
bound in a failover, and is refused unless ``spec.account.acceptDataLossOnFailover`` accepts that.

Account hardening (issue 13, item 4): ``minimalTlsVersion`` defaults to Tls12 and is always
enforced (raising it never opens anything). The network fields (``publicNetworkAccess``,
``ipRules``, ``virtualNetworkRules``), ``disableKeyBasedMetadataWriteAccess`` and ``backup`` are
enforced only when set: unset (None here), the operator leaves them as the account has them, so
that adopting a locked-down account never opens it to the internet, drops its firewall rules or
tries to turn continuous backup back into periodic, which Azure refuses. A new account gets Azure's
defaults for them (public access, no rules, periodic backup every 240 minutes kept 8 hours, Geo).

Network (issue 13, item 2): ``spec.shim.allowedClients`` lists the NetworkPolicy peers (a podSelector
and/or a namespaceSelector each) admitted to the client port; unset, the pods of the cluster's own
namespace. ``spec.shim.metrics.allowedFrom`` does the same for the metrics port; unset, the pods of
namespaces labelled ``cosmosetcd.io/scrape-metrics: "true"`` (see :mod:`.network_policy`). An empty
list admits nobody.

Keyless Cosmos (issue 13, item 3): ``spec.azure.dataPlaneAuth`` is ``EntraID`` (the shim signs in with
workload identity ``spec.shim.identity``; the account's local auth is disabled) or ``Key`` (the
account keys in a Secret). Unset, it is EntraID when ``spec.shim.identity`` is given and Key
otherwise, so that objects made before it keep their keys.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from cosmos_etcd_shim.storage.cosmos.layout import DEFAULT_CONTAINER, DEFAULT_DATABASE

GROUP = "cosmosetcd.io"
VERSION = "v1alpha1"
PLURAL = "cosmosetcdclusters"
KIND = "CosmosEtcdCluster"

# Azure's rules: 3-44 characters, lowercase letters, digits and hyphens, not at either end.
ACCOUNT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,42}[a-z0-9])$")
# 1-90 characters; a period is allowed anywhere but at the end.
RESOURCE_GROUP_NAME = re.compile(r"^[-\w._()]{0,89}[-\w_()]$")
SUBSCRIPTION_ID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Cosmos database and container ids: up to 255 characters, none of / \ ? # and no trailing space.
SQL_RESOURCE_NAME = re.compile(r"^[^/\\?#]{0,254}[^/\\?#\s]$")
LOCATION_NAME = re.compile(r"^[a-z0-9]+$")
# A DNS name of a certificate (lowercase labels; a wildcard only as the whole first label).
DNS_NAME = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

MANUAL_MINIMUM_RUS = 400
MANUAL_STEP_RUS = 100
AUTOSCALE_MINIMUM_MAX_RUS = 1000
AUTOSCALE_STEP_RUS = 1000
MAX_STALENESS_PREFIX_RANGE = (1, 2_147_483_647)
MAX_INTERVAL_SECONDS_RANGE = (5, 86_400)
# Azure's bounds of periodic backup; the retention must also hold two backups.
BACKUP_INTERVAL_MINUTES_RANGE = (60, 1440)
BACKUP_RETENTION_HOURS_RANGE = (8, 720)
SUBNET_ID = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/"
                       r"[^/]+/subnets/[^/]+$", re.IGNORECASE)

SERVICE_PRINCIPAL_KEYS = ("clientId", "clientSecret", "tenantId")
GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Kubernetes label selectors, as a NetworkPolicy peer takes them.
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PEER_SELECTORS = ("podSelector", "namespaceSelector")


class InvalidSpec(ValueError):
    """The spec cannot be acted on; retrying will not help until the user changes it."""


class ConsistencyLevel(str, enum.Enum):
    """The account consistency levels under which a read in the write region sees the latest write."""
    BOUNDED_STALENESS = "BoundedStaleness"
    STRONG = "Strong"


# Azure's other levels: a read in the write region may miss the latest revision, so the shim refuses them.
WEAKER_CONSISTENCY_LEVELS = ("Eventual", "ConsistentPrefix", "Session")


class ThroughputMode(str, enum.Enum):
    MANUAL = "Manual"
    AUTOSCALE = "Autoscale"


class PublicNetworkAccess(str, enum.Enum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    SECURED_BY_PERIMETER = "SecuredByPerimeter"


class MinimalTlsVersion(str, enum.Enum):
    """As azure-mgmt-cosmosdb's MinimalTlsVersion names them."""
    TLS10 = "Tls"
    TLS11 = "Tls11"
    TLS12 = "Tls12"


class BackupType(str, enum.Enum):
    PERIODIC = "Periodic"
    CONTINUOUS = "Continuous"


class ContinuousTier(str, enum.Enum):
    DAYS_7 = "Continuous7Days"
    DAYS_30 = "Continuous30Days"


class BackupStorageRedundancy(str, enum.Enum):
    GEO = "Geo"
    LOCAL = "Local"
    ZONE = "Zone"


class DataPlaneAuth(str, enum.Enum):
    """How the shim signs in to the account's data plane."""
    KEY = "Key"
    ENTRA_ID = "EntraID"


class DeletionPolicy(str, enum.Enum):
    RETAIN = "Retain"
    DELETE = "Delete"


@dataclasses.dataclass(frozen=True)
class Location:
    name: str
    failover_priority: int
    zone_redundant: bool = False


@dataclasses.dataclass(frozen=True)
class Consistency:
    level: ConsistencyLevel
    # Only meaningful for BoundedStaleness; Azure's own defaults.
    max_staleness_prefix: int = 100_000
    max_interval_seconds: int = 300


@dataclasses.dataclass(frozen=True)
class VirtualNetworkRule:
    subnet_id: str
    ignore_missing_service_endpoint: bool = False


@dataclasses.dataclass(frozen=True)
class Backup:
    """Periodic (the interval, retention and redundancy count) or continuous (the tier counts)."""
    type: BackupType
    interval_minutes: int = 240
    retention_hours: int = 8
    storage_redundancy: BackupStorageRedundancy = BackupStorageRedundancy.GEO
    tier: ContinuousTier = ContinuousTier.DAYS_30


@dataclasses.dataclass(frozen=True)
class Throughput:
    mode: ThroughputMode = ThroughputMode.MANUAL
    # RU/s for Manual; the autoscale maximum RU/s for Autoscale.
    request_units: int = MANUAL_MINIMUM_RUS


@dataclasses.dataclass(frozen=True)
class Credentials:
    # None: workload identity / DefaultAzureCredential from the operator's environment.
    service_principal_secret: str | None = None


class TLSMode(str, enum.Enum):
    """How the shim serves clients (operator/pki.py): the operator's CA, the user's Secret, plain text."""
    MANAGED = "Managed"
    SECRET = "Secret"
    DISABLED = "Disabled"


@dataclasses.dataclass(frozen=True)
class ShimTLS:
    mode: TLSMode | None = None  # None: not in the spec; the operator decides (pki.mode_in_effect)
    secret_name: str | None = None  # mode Secret: the user's kubernetes.io/tls Secret
    client_cert_auth: bool = True
    extra_names: tuple[str, ...] = ()  # Managed: more DNS names or IP addresses of the server certificate
    client_common_name: str = "kube-apiserver"  # Managed: the client certificate's CN


@dataclasses.dataclass(frozen=True)
class WorkloadIdentity:
    """The Entra ID identity the shim's pods sign in as (a user-assigned managed identity or an app
    registration with a federated credential for the shim's ServiceAccount)."""
    client_id: str  # what the ServiceAccount's azure.workload.identity/client-id annotation names
    principal_id: str  # its object id, which Cosmos DB's role assignment names


@dataclasses.dataclass(frozen=True)
class Shim:
    replicas: int = 2
    image: str | None = None  # None: the operator's --shim-image
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tls: ShimTLS = ShimTLS()
    identity: WorkloadIdentity | None = None
    # NetworkPolicy peers ({podSelector, namespaceSelector}); None: network_policy.py's defaults.
    allowed_clients: tuple[Mapping[str, Any], ...] | None = None
    metrics_allowed_from: tuple[Mapping[str, Any], ...] | None = None


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    subscription_id: str
    resource_group: str
    location: str
    account_name: str
    consistency: Consistency
    locations: tuple[Location, ...]
    automatic_failover: bool
    accept_data_loss_on_failover: bool
    tags: Mapping[str, str]
    database: str
    container: str
    throughput: Throughput
    credentials: Credentials
    shim: Shim
    deletion_policy: DeletionPolicy
    # Account hardening; None: left as the account has it (see the module docstring).
    minimal_tls_version: MinimalTlsVersion = MinimalTlsVersion.TLS12
    public_network_access: PublicNetworkAccess | None = None
    ip_rules: tuple[str, ...] | None = None
    virtual_network_rules: tuple[VirtualNetworkRule, ...] | None = None
    disable_key_based_metadata_write_access: bool | None = None
    backup: Backup | None = None
    data_plane_auth: DataPlaneAuth = DataPlaneAuth.KEY

    @property
    def failover_can_lose_writes(self) -> bool:
        """Azure may fail over on its own to a region that has not yet received the last
        acknowledged writes (up to the staleness bound)."""
        return len(self.locations) > 1 and self.automatic_failover and \
            self.consistency.level is not ConsistencyLevel.STRONG


def parse(spec: Mapping[str, Any], *, name: str) -> ClusterSpec:
    """Read a CosmosEtcdCluster's ``spec``; ``name`` is the object's name (the default account name)."""
    azure = _mapping(spec, "azure", required=True)
    shim = _shim(_mapping(spec, "shim"))
    location = _string(azure, "location", "spec.azure.location", LOCATION_NAME, "a region name such as westeurope")
    account = _mapping(spec, "account")
    cosmos = _mapping(spec, "cosmos")
    locations = _locations(account.get("locations"), location)
    parsed = ClusterSpec(
        subscription_id=_string(azure, "subscriptionId", "spec.azure.subscriptionId", SUBSCRIPTION_ID, "a GUID"),
        resource_group=_string(azure, "resourceGroup", "spec.azure.resourceGroup", RESOURCE_GROUP_NAME,
                               "an Azure resource group name"),
        location=location,
        account_name=_string(account, "name", "spec.account.name", ACCOUNT_NAME,
                             "3-44 lowercase letters, digits and hyphens, not starting or ending with a hyphen",
                             default=name),
        consistency=_consistency(_mapping(account, "consistency"), multi_region=len(locations) > 1),
        locations=locations,
        automatic_failover=_boolean(account, "automaticFailover", "spec.account.automaticFailover", default=True),
        accept_data_loss_on_failover=_boolean(account, "acceptDataLossOnFailover",
                                              "spec.account.acceptDataLossOnFailover", default=False),
        tags=_tags(account.get("tags")),
        database=_string(cosmos, "database", "spec.cosmos.database", SQL_RESOURCE_NAME,
                         "a Cosmos DB id (no / \\ ? #)", default=DEFAULT_DATABASE),
        container=_string(cosmos, "container", "spec.cosmos.container", SQL_RESOURCE_NAME,
                          "a Cosmos DB id (no / \\ ? #)", default=DEFAULT_CONTAINER),
        throughput=_throughput(_mapping(spec, "throughput")),
        credentials=_credentials(_mapping(azure, "credentials")),
        shim=shim,
        deletion_policy=_enum(spec, "deletionPolicy", "spec.deletionPolicy", DeletionPolicy, DeletionPolicy.RETAIN),
        minimal_tls_version=_enum(account, "minimalTlsVersion", "spec.account.minimalTlsVersion", MinimalTlsVersion,
                                  MinimalTlsVersion.TLS12),
        public_network_access=_enum(account, "publicNetworkAccess", "spec.account.publicNetworkAccess",
                                    PublicNetworkAccess, None),
        ip_rules=_ip_rules(account.get("ipRules")),
        virtual_network_rules=_virtual_network_rules(account.get("virtualNetworkRules")),
        disable_key_based_metadata_write_access=_optional_boolean(
            account, "disableKeyBasedMetadataWriteAccess", "spec.account.disableKeyBasedMetadataWriteAccess"),
        backup=_backup(account.get("backup")),
        data_plane_auth=_enum(azure, "dataPlaneAuth", "spec.azure.dataPlaneAuth", DataPlaneAuth,
                              DataPlaneAuth.ENTRA_ID if shim.identity else DataPlaneAuth.KEY),
    )
    if parsed.data_plane_auth is DataPlaneAuth.ENTRA_ID and shim.identity is None:
        raise InvalidSpec("spec.azure.dataPlaneAuth EntraID needs spec.shim.identity (clientId and principalId of "
                          "the identity the shim signs in as)")
    if parsed.failover_can_lose_writes and not parsed.accept_data_loss_on_failover:
        raise InvalidSpec(_failover_refusal(parsed.consistency))
    return parsed


def _failover_refusal(consistency: Consistency) -> str:
    """Why a multi-region account with automatic failover needs Strong, and the three ways out."""
    return (f"spec.account.consistency.level {consistency.level.value} with spec.account.automaticFailover on a "
            f"multi-region account can lose the last acknowledged writes (up to the staleness bound, "
            f"{consistency.max_staleness_prefix} versions or {consistency.max_interval_seconds} seconds) when Azure "
            f"fails over: set spec.account.consistency.level: Strong (or remove it; Strong is the multi-region "
            f"default), or spec.account.automaticFailover: false, or spec.account.acceptDataLossOnFailover: true "
            f"to accept that loss")


def _consistency(section: Mapping[str, Any], *, multi_region: bool) -> Consistency:
    defaults = Consistency(ConsistencyLevel.STRONG if multi_region else ConsistencyLevel.BOUNDED_STALENESS)
    if section.get("level") in WEAKER_CONSISTENCY_LEVELS:
        raise InvalidSpec(f"spec.account.consistency.level must be BoundedStaleness or Strong, not "
                          f"{section['level']!r}: the shim refuses weaker levels, under which a read in the write "
                          f"region can miss the latest revision")
    return Consistency(
        level=_enum(section, "level", "spec.account.consistency.level", ConsistencyLevel, defaults.level),
        max_staleness_prefix=_integer(section, "maxStalenessPrefix", "spec.account.consistency.maxStalenessPrefix",
                                      MAX_STALENESS_PREFIX_RANGE, defaults.max_staleness_prefix),
        max_interval_seconds=_integer(section, "maxIntervalInSeconds",
                                      "spec.account.consistency.maxIntervalInSeconds",
                                      MAX_INTERVAL_SECONDS_RANGE, defaults.max_interval_seconds),
    )


def _locations(value: Any, write_region: str) -> tuple[Location, ...]:
    if value is None:
        return (Location(name=write_region, failover_priority=0),)
    if not isinstance(value, list) or not value:
        raise InvalidSpec("spec.account.locations must be a non-empty list")
    locations = []
    for index, item in enumerate(value):
        field = f"spec.account.locations[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidSpec(f"{field} must be an object")
        locations.append(Location(
            name=_string(item, "name", f"{field}.name", LOCATION_NAME, "a region name such as westeurope"),
            failover_priority=_integer(item, "failoverPriority", f"{field}.failoverPriority", (0, 100), index),
            zone_redundant=_boolean(item, "zoneRedundant", f"{field}.zoneRedundant", default=False),
        ))
    names = [location.name for location in locations]
    priorities = sorted(location.failover_priority for location in locations)
    if len(set(names)) != len(names):
        raise InvalidSpec(f"spec.account.locations lists a region twice: {names}")
    if priorities != list(range(len(locations))):
        raise InvalidSpec("spec.account.locations: failover priorities must be 0, 1, ... without gaps or repeats")
    write = next(location for location in locations if location.failover_priority == 0)
    if write.name != write_region:
        raise InvalidSpec(f"spec.account.locations: the region with failoverPriority 0 is {write.name!r}, "
                          f"but spec.azure.location is {write_region!r}; they must be the same")
    return tuple(sorted(locations, key=lambda location: location.failover_priority))


def _ip_rules(value: Any) -> tuple[str, ...] | None:
    """IPv4 addresses or CIDR ranges, as Cosmos's firewall takes them (it has no IPv6 rules)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidSpec("spec.account.ipRules must be a list of IPv4 addresses or CIDR ranges")
    for index, item in enumerate(value):
        try:
            ipaddress.IPv4Network(item if isinstance(item, str) else "", strict=True)
        except ValueError:
            raise InvalidSpec(f"spec.account.ipRules[{index}] must be an IPv4 address or a CIDR range such as "
                              f"203.0.113.0/24 (no host bits set), not {item!r}") from None
    if len(set(value)) != len(value):
        raise InvalidSpec(f"spec.account.ipRules lists an entry twice: {value}")
    return tuple(value)


def _virtual_network_rules(value: Any) -> tuple[VirtualNetworkRule, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidSpec("spec.account.virtualNetworkRules must be a list")
    rules = []
    for index, item in enumerate(value):
        field = f"spec.account.virtualNetworkRules[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidSpec(f"{field} must be an object")
        rules.append(VirtualNetworkRule(
            subnet_id=_string(item, "id", f"{field}.id", SUBNET_ID, "a subnet resource id (/subscriptions/…/"
                              "providers/Microsoft.Network/virtualNetworks/…/subnets/…)"),
            ignore_missing_service_endpoint=_boolean(item, "ignoreMissingVNetServiceEndpoint",
                                                     f"{field}.ignoreMissingVNetServiceEndpoint", default=False)))
    ids = [rule.subnet_id.lower() for rule in rules]
    if len(set(ids)) != len(ids):
        raise InvalidSpec("spec.account.virtualNetworkRules lists a subnet twice")
    return tuple(rules)


def _backup(value: Any) -> Backup | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidSpec("spec.account.backup must be an object")
    kind = _enum(value, "type", "spec.account.backup.type", BackupType, None)
    if kind is None:
        raise InvalidSpec("spec.account.backup.type is required (Periodic or Continuous)")
    periodic_fields = {"intervalInMinutes", "retentionInHours", "storageRedundancy"} & value.keys()
    if kind is BackupType.CONTINUOUS:
        if periodic_fields:
            raise InvalidSpec(f"spec.account.backup: {', '.join(sorted(periodic_fields))} only apply to type "
                              f"Periodic")
        return Backup(kind, tier=_enum(value, "tier", "spec.account.backup.tier", ContinuousTier,
                                       ContinuousTier.DAYS_30))
    if "tier" in value:
        raise InvalidSpec("spec.account.backup.tier only applies to type Continuous")
    defaults = Backup(kind)
    backup = Backup(
        kind,
        interval_minutes=_integer(value, "intervalInMinutes", "spec.account.backup.intervalInMinutes",
                                  BACKUP_INTERVAL_MINUTES_RANGE, defaults.interval_minutes),
        retention_hours=_integer(value, "retentionInHours", "spec.account.backup.retentionInHours",
                                 BACKUP_RETENTION_HOURS_RANGE, defaults.retention_hours),
        storage_redundancy=_enum(value, "storageRedundancy", "spec.account.backup.storageRedundancy",
                                 BackupStorageRedundancy, defaults.storage_redundancy))
    if backup.retention_hours * 60 < 2 * backup.interval_minutes:
        raise InvalidSpec(f"spec.account.backup.retentionInHours ({backup.retention_hours}) must keep at least two "
                          f"backups: at least twice intervalInMinutes ({backup.interval_minutes}) in hours")
    return backup


def _throughput(section: Mapping[str, Any]) -> Throughput:
    mode = _enum(section, "mode", "spec.throughput.mode", ThroughputMode, ThroughputMode.MANUAL)
    if mode is ThroughputMode.MANUAL:
        minimum, step = MANUAL_MINIMUM_RUS, MANUAL_STEP_RUS
    else:
        minimum, step = AUTOSCALE_MINIMUM_MAX_RUS, AUTOSCALE_STEP_RUS
    units = _integer(section, "requestUnits", "spec.throughput.requestUnits", (minimum, 1_000_000), minimum)
    if units % step:
        raise InvalidSpec(f"spec.throughput.requestUnits must be a multiple of {step} in {mode.value} mode, "
                          f"not {units}")
    return Throughput(mode=mode, request_units=units)


def _credentials(section: Mapping[str, Any]) -> Credentials:
    reference = _mapping(section, "servicePrincipalSecretRef")
    if not reference:
        return Credentials()
    return Credentials(service_principal_secret=_string(
        reference, "name", "spec.azure.credentials.servicePrincipalSecretRef.name", _DNS_SUBDOMAIN,
        "a Secret name"))


def _shim(section: Mapping[str, Any]) -> Shim:
    tls = _mapping(section, "tls")
    resources = section.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidSpec("spec.shim.resources must be an object (requests/limits)")
    image = section.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise InvalidSpec("spec.shim.image must be a non-empty image reference")
    return Shim(
        replicas=_integer(section, "replicas", "spec.shim.replicas", (1, 50), 2),
        image=image,
        resources=dict(resources),
        tls=_tls(tls),
        identity=_identity(section.get("identity")),
        allowed_clients=_peers(section.get("allowedClients"), "spec.shim.allowedClients"),
        metrics_allowed_from=_peers(_mapping(section, "metrics").get("allowedFrom"),
                                    "spec.shim.metrics.allowedFrom"),
    )


def _identity(value: Any) -> WorkloadIdentity | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidSpec("spec.shim.identity must be an object (clientId, principalId)")
    return WorkloadIdentity(
        client_id=_string(value, "clientId", "spec.shim.identity.clientId", GUID, "a GUID"),
        principal_id=_string(value, "principalId", "spec.shim.identity.principalId", GUID,
                             "a GUID (the identity's object id)"))


def _peers(value: Any, field: str) -> tuple[Mapping[str, Any], ...] | None:
    """NetworkPolicy peers: each a podSelector and/or a namespaceSelector (no ipBlock: pods move)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidSpec(f"{field} must be a list of {{podSelector, namespaceSelector}}")
    peers = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, Mapping) or not item or set(item) - set(PEER_SELECTORS):
            raise InvalidSpec(f"{where} must have a podSelector and/or a namespaceSelector, and nothing else")
        peers.append({key: _label_selector(item[key], f"{where}.{key}") for key in PEER_SELECTORS if key in item})
    return tuple(peers)


def _label_selector(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) - {"matchLabels", "matchExpressions"}:
        raise InvalidSpec(f"{field} must be a label selector (matchLabels, matchExpressions)")
    selector: dict[str, Any] = {}
    labels = value.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in labels.items()):
            raise InvalidSpec(f"{field}.matchLabels must map label names to strings")
        selector["matchLabels"] = dict(labels)
    expressions = value.get("matchExpressions")
    if expressions is not None:
        if not isinstance(expressions, list):
            raise InvalidSpec(f"{field}.matchExpressions must be a list")
        selector["matchExpressions"] = [_expression(item, f"{field}.matchExpressions[{index}]")
                                        for index, item in enumerate(expressions)]
    return selector


def _expression(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("key"), str) or not value["key"]:
        raise InvalidSpec(f"{field} needs a key")
    operator = value.get("operator")
    if operator not in SELECTOR_OPERATORS:
        raise InvalidSpec(f"{field}.operator must be one of {', '.join(SELECTOR_OPERATORS)}, not {operator!r}")
    values = value.get("values")
    if operator in ("In", "NotIn"):
        if not isinstance(values, list) or not values or not all(isinstance(item, str) for item in values):
            raise InvalidSpec(f"{field}.values must be a non-empty list of strings with operator {operator}")
        return {"key": value["key"], "operator": operator, "values": list(values)}
    if values:
        raise InvalidSpec(f"{field}.values must be empty with operator {operator}")
    return {"key": value["key"], "operator": operator}


def _tls(section: Mapping[str, Any]) -> ShimTLS:
    mode = _enum(section, "mode", "spec.shim.tls.mode", TLSMode, None)
    secret_name = None if section.get("secretName") is None else _string(
        section, "secretName", "spec.shim.tls.secretName", _DNS_SUBDOMAIN, "a Secret name")
    if mode is TLSMode.SECRET and secret_name is None:
        raise InvalidSpec("spec.shim.tls.secretName is required with spec.shim.tls.mode Secret")
    if mode not in (None, TLSMode.SECRET) and secret_name is not None:
        raise InvalidSpec(f"spec.shim.tls.secretName is only for mode Secret, not {mode.value}")
    managed_fields = {"extraNames", "clientCommonName"} & section.keys()
    if managed_fields and (secret_name is not None or mode is TLSMode.DISABLED):
        raise InvalidSpec(f"spec.shim.tls: {', '.join(sorted(managed_fields))} only apply to mode Managed")
    client_cert_auth = _boolean(section, "clientCertAuth", "spec.shim.tls.clientCertAuth", default=True)
    if not client_cert_auth and secret_name is None:
        raise InvalidSpec("spec.shim.tls.clientCertAuth: false is only for mode Secret: with Managed TLS the "
                          "shim always requires the client certificates the operator issues")
    extra_names = section.get("extraNames") or []
    if not isinstance(extra_names, list) or not all(isinstance(n, str) and (DNS_NAME.match(n) or _is_ip(n))
                                                    for n in extra_names):
        raise InvalidSpec(f"spec.shim.tls.extraNames must be a list of DNS names or IP addresses, not "
                          f"{extra_names!r}")
    common_name = section.get("clientCommonName", ShimTLS.client_common_name)
    if not isinstance(common_name, str) or not 0 < len(common_name) <= 64 or not common_name.isprintable():
        raise InvalidSpec(f"spec.shim.tls.clientCommonName must be 1-64 printable characters, not {common_name!r}")
    return ShimTLS(mode=mode, secret_name=secret_name, client_cert_auth=client_cert_auth,
                   extra_names=tuple(dict.fromkeys(extra_names)), client_common_name=common_name)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _tags(value: Any) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidSpec("spec.account.tags must map strings to strings")
    if len(value) > 50:
        raise InvalidSpec("spec.account.tags: Azure allows at most 50 tags")
    return dict(value)


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _mapping(parent: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise InvalidSpec(f"spec.{key} is required")
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"{key} must be an object")
    return value


def _string(section: Mapping[str, Any], key: str, field: str, pattern: re.Pattern[str], meaning: str,
            *, default: str | None = None) -> str:
    value = section.get(key, default)
    if value is None:
        raise InvalidSpec(f"{field} is required")
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidSpec(f"{field} must be {meaning}, not {value!r}")
    return value


def _integer(section: Mapping[str, Any], key: str, field: str, bounds: tuple[int, int], default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{field} must be an integer, not {value!r}")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidSpec(f"{field} must be between {low} and {high}, not {value}")
    return value


def _boolean(section: Mapping[str, Any], key: str, field: str, *, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise InvalidSpec(f"{field} must be true or false, not {value!r}")
    return value


def _optional_boolean(section: Mapping[str, Any], key: str, field: str) -> bool | None:
    return None if section.get(key) is None else _boolean(section, key, field, default=False)


def _enum(section: Mapping[str, Any], key: str, field: str, kind: type[enum.Enum], default: enum.Enum | None):
    value = section.get(key, default.value if default is not None else None)
    if value is None and default is None:
        return None
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InvalidSpec(f"{field} must be one of {choices}, not {value!r}") from None
