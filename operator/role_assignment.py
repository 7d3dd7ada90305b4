"""The Cosmos DB data-plane role assignment of a keyless CosmosEtcdCluster (``dataPlaneAuth: EntraID``).

The shim's identity (``spec.shim.identity.principalId``) gets Cosmos DB's built-in "Cosmos DB Built-in
Data Contributor" role (role definition ``00000000-0000-0000-0000-000000000002`` of the account),
scoped to the cluster's database (``.../databaseAccounts/{a}/dbs/{database}``): read and write items of
its containers, nothing of other databases and nothing of the account's control plane.

One part of the reconciliation with the shape of the others: :func:`reconcile` reads the assignment,
compares it with the spec and, only if it differs or is missing, starts one ARM operation
(``sql_resources.begin_create_update_sql_role_assignment``) through
:meth:`cosmos_etcd_operator.arm.CosmosResources.step`, which keeps the long-running protocol (a
continuation token in status, resumed by the next pass). The assignment's id is a UUID derived from
the scope, role and principal (:func:`assignment_id`): a second pass, another operator, or the same
spec applied again finds and adopts it instead of creating another; ARM refuses two assignments of one
role, scope and principal, so an equal assignment made by hand under another id is adopted too
(one list call, made only when the derived id is absent).

:func:`remove` deletes the assignment (on delete with ``deletionPolicy: Delete``, and when a cluster
goes back to ``dataPlaneAuth: Key``): the assignment named in ``status.roleAssignment`` goes, whatever
principal the spec names now.

:func:`reconcile_part` is the ``RoleAssignment`` part of a pass: with ``EntraID`` the assignment
exists (one the operator made for an identity the spec no longer names is removed) and
``status.roleAssignment`` names it; with ``Key`` no assignment of the operator's is left.
"""
from __future__ import annotations

import dataclasses
import uuid

from azure.mgmt.cosmosdb import models

from cosmos_etcd_operator import conditions
from cosmos_etcd_operator.arm import Change, CosmosResources, Deleted, Pending
from cosmos_etcd_operator.reconciliation import Reconciliation
from cosmos_etcd_operator.spec import ClusterSpec, DataPlaneAuth

ROLE_ASSIGNMENT, ROLE_ASSIGNMENT_DELETION = "role_assignment", "role_assignment_delete"
REMOVAL = "roleAssignmentRemoval"  # the key of a removal in status.pendingOperations
# Cosmos DB's built-in data-plane roles: ...01 is the Data Reader, ...02 the Data Contributor.
DATA_CONTRIBUTOR_ROLE = "00000000-0000-0000-0000-000000000002"
DATA_CONTRIBUTOR_NAME = "Cosmos DB Built-in Data Contributor"
# The namespace of the derived assignment ids (a constant of this project; any fixed UUID would do).
_ASSIGNMENT_NAMESPACE = uuid.UUID("5b0f3f6e-6a7c-4c8e-9d1e-2f4a6b8c0d1e")


@dataclasses.dataclass(frozen=True)
class RoleAssignmentReady:
    """The assignment in force, as ``status.roleAssignment`` shows it."""
    id: str  # the assignment's GUID
    principal_id: str
    scope: str
    role_definition_id: str

    def as_status(self) -> dict[str, str]:
        return {"id": self.id, "principalId": self.principal_id, "scope": self.scope,
                "roleDefinitionId": self.role_definition_id}


def account_id(spec: ClusterSpec) -> str:
    return (f"/subscriptions/{spec.subscription_id}/resourceGroups/{spec.resource_group}"
            f"/providers/Microsoft.DocumentDB/databaseAccounts/{spec.account_name}")


def scope(spec: ClusterSpec) -> str:
    """The database, in Cosmos DB's data-plane resource path (``/dbs/``, not ``/sqlDatabases/``)."""
    return f"{account_id(spec)}/dbs/{spec.database}"


def role_definition_id(spec: ClusterSpec) -> str:
    return f"{account_id(spec)}/sqlRoleDefinitions/{DATA_CONTRIBUTOR_ROLE}"


def assignment_id(spec: ClusterSpec) -> str:
    """The same for the same scope, role and principal; ARM's ids are case-insensitive."""
    assert spec.shim.identity is not None
    name = f"{scope(spec).lower()}|{DATA_CONTRIBUTOR_ROLE}|{spec.shim.identity.principal_id.lower()}"
    return str(uuid.uuid5(_ASSIGNMENT_NAMESPACE, name))


async def reconcile(resources: CosmosResources, spec: ClusterSpec,
                    resume: str | None = None) -> RoleAssignmentReady | Pending:
    """The identity holds the Data Contributor role on the database (created or adopted)."""
    assert spec.shim.identity is not None, "EntraID specs name an identity (spec.py)"
    principal = spec.shim.identity.principal_id
    wanted_id, wanted_scope, wanted_role = assignment_id(spec), scope(spec), role_definition_id(spec)
    operations = resources.client.sql_resources

    async def compare(spec: ClusterSpec, created: bool):
        found = await resources.read("get_role_assignment", operations.get_sql_role_assignment, wanted_id,
                                     spec.resource_group, spec.account_name)
        if found is not None and _is(found, wanted_role, wanted_scope, principal):
            return RoleAssignmentReady(wanted_id, principal, wanted_scope, wanted_role)
        if found is None:
            adopted = await _equal_assignment(resources, spec, wanted_role, wanted_scope, principal)
            if adopted is not None:
                return adopted
        parameters = models.SqlRoleAssignmentCreateUpdateParameters(properties=models.SqlRoleAssignmentResource(
            role_definition_id=wanted_role, scope=wanted_scope, principal_id=principal))
        action = "create" if found is None else "restore"
        return Change("create_role_assignment", f"{action} the {DATA_CONTRIBUTOR_NAME} role assignment of "
                      f"{principal} on database {spec.database}", lambda **options: (
                          operations.begin_create_update_sql_role_assignment(
                              wanted_id, spec.resource_group, spec.account_name, parameters, **options)),
                      creates=found is None)

    return await resources.step(ROLE_ASSIGNMENT, spec, resume, compare)


async def remove(resources: CosmosResources, spec: ClusterSpec, assignment: str,
                 resume: str | None = None) -> Deleted | Pending:
    """The assignment ``assignment`` (a GUID) no longer exists."""
    operations = resources.client.sql_resources

    async def compare(spec: ClusterSpec, created: bool):
        found = await resources.read("get_role_assignment", operations.get_sql_role_assignment, assignment,
                                     spec.resource_group, spec.account_name)
        if found is None:
            return Deleted()
        return Change("delete_role_assignment", f"delete role assignment {assignment}", lambda **options: (
            operations.begin_delete_sql_role_assignment(assignment, spec.resource_group, spec.account_name,
                                                        **options)))

    return await resources.step(ROLE_ASSIGNMENT_DELETION, spec, resume, compare)


async def reconcile_part(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    """The ``RoleAssignment`` part of a pass."""
    if spec.data_plane_auth is DataPlaneAuth.KEY:
        await remove_part(step, resources, spec)
        step.ready(conditions.ROLE_ASSIGNMENT, "NotUsed", "spec.azure.dataPlaneAuth Key: the shim signs in with the "
                   "account keys")
        return
    ready = await step.azure(conditions.ROLE_ASSIGNMENT, lambda token: reconcile(resources, spec, token))
    made = step.status.get("roleAssignment") or {}
    if made and made.get("id", "").lower() != ready.id.lower():
        await remove_part(step, resources, spec)
    step.new_status["roleAssignment"] = ready.as_status()
    step.ready(conditions.ROLE_ASSIGNMENT, "Assigned", f"{DATA_CONTRIBUTOR_NAME} for principal "
               f"{ready.principal_id} on {ready.scope} (assignment {ready.id})")


async def remove_part(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    """The role assignment in ``status.roleAssignment`` (the operator's) is deleted."""
    made = step.status.get("roleAssignment")
    if not made:
        return
    await step.azure(conditions.ROLE_ASSIGNMENT, lambda token: remove(resources, spec, made["id"], token),
                     key=REMOVAL)
    step.new_status["roleAssignment"] = None  # a merge patch's None removes the field


async def _equal_assignment(resources: CosmosResources, spec: ClusterSpec, role: str, scope_: str,
                            principal: str) -> RoleAssignmentReady | None:
    """An assignment of the same role, scope and principal under another id (made by hand), if any."""
    listed = await resources.read("list_role_assignments", _listed, resources, spec)
    for found in listed or []:
        if _is(found, role, scope_, principal):
            return RoleAssignmentReady(found.name or found.id.rsplit("/", 1)[-1], principal, scope_, role)
    return None


async def _listed(resources: CosmosResources, spec: ClusterSpec) -> list[models.SqlRoleAssignmentGetResults]:
    return [item async for item in resources.client.sql_resources.list_sql_role_assignments(
        spec.resource_group, spec.account_name)]


def _is(found: models.SqlRoleAssignmentGetResults, role: str, scope_: str, principal: str) -> bool:
    properties = found.properties or models.SqlRoleAssignmentResource()
    return ((properties.role_definition_id or "").lower() == role.lower()
            and (properties.scope or "").rstrip("/").lower() == scope_.lower()
            and (properties.principal_id or "").lower() == principal.lower())
