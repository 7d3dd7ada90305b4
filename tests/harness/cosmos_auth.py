"""Cosmos DB's data-plane authorization, in front of the local Cosmos server, which checks none.

The local server (``@vercel/cosmosdb-server``) accepts any ``Authorization`` header, an account key,
an Entra ID token or garbage alike. :class:`EntraIdGate` is the fault proxy
(:mod:`tests.harness.faultproxy`) serving HTTPS with a certificate of the ARM stand-in's CA, with an
authorizer that answers as Cosmos DB does for an account with local auth disabled
(``disableLocalAuth: true``) and role-based access control:

* a key (``type=master`` or ``type=resource``): 401 ``Unauthorized``, "Local Authorization is
  disabled. Use an AAD token to authorize all requests.";
* ``type=aad&ver=1.0&sig=<token>``: the token must be one the stand-in's authority issued, still
  valid, for the account's audience (what azure-cosmos asks for: the endpoint's scheme and host),
  else 401;
* its principal (the token's ``oid``) must hold a role assignment in the stand-in (the operator's
  ``sqlRoleAssignments``) whose scope covers the request: the account, or the database (and
  container) the request's path names. Reads need Data Reader or Data Contributor, anything else Data
  Contributor; else 403 with substatus 5301, as Cosmos DB answers. The account read (``GET /``)
  needs an assignment anywhere in the account.

Assignments are looked up at every request, as Cosmos DB applies a removed one within minutes. The
gate advertises itself as the account's only region, so that the client's endpoint discovery never
bypasses it. ``decisions`` records (auth type, principal, method, path, status) of every request:
what reached the server and how it signed in.

It runs in the calling event loop, as the stand-in does: start shims and run blocking clients in
threads (``asyncio.to_thread``) so that the loop keeps answering tokens and requests.
"""
from __future__ import annotations

import dataclasses
import urllib.parse

from tests.harness.arm import BUILT_IN_ROLE_DEFINITIONS, ArmStandIn
from tests.harness.faultproxy import FaultProxy, _Message, http_answer

DATA_READER, DATA_CONTRIBUTOR = BUILT_IN_ROLE_DEFINITIONS
LOCAL_AUTH_DISABLED = "Local Authorization is disabled. Use an AAD token to authorize all requests."
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclasses.dataclass(frozen=True)
class Decision:
    auth: str  # aad, master, resource, or "" without an Authorization header
    principal: str | None  # the token's oid
    method: str
    path: str
    status: int  # 200: passed to the server


class EntraIdGate:
    """``async with EntraIdGate(arm, account, upstream_port) as gate``: ``gate.endpoint`` for clients."""

    def __init__(self, arm: ArmStandIn, account: tuple[str, str, str], upstream_port: int):
        self.arm = arm
        self.subscription, self.resource_group, self.account = account
        self.decisions: list[Decision] = []
        self.proxy = FaultProxy("127.0.0.1", upstream_port, ssl_context=arm.server_ssl_context())
        self.proxy.authorize = self._authorize
        self.proxy.rewrite_account = self._only_region

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    @property
    def audience(self) -> str:
        """The audience azure-cosmos requests tokens for: the endpoint's scheme and host."""
        parts = urllib.parse.urlsplit(self.endpoint)
        return f"{parts.scheme}://{parts.hostname}"

    async def __aenter__(self) -> EntraIdGate:
        await self.proxy.start()
        self.arm.data_plane_audiences.add(self.audience)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.proxy.stop()

    def _only_region(self, account: dict) -> dict:
        region = {"name": "West Europe", "databaseAccountEndpoint": self.endpoint}
        return {**account, "writableLocations": [region], "readableLocations": [region]}

    def _authorize(self, method: str, target: str, request: _Message) -> bytes | None:
        path = urllib.parse.urlsplit(target).path
        fields = dict(part.split("=", 1) for part in
                      urllib.parse.unquote((request.header(b"authorization") or b"").decode("latin-1")).split("&")
                      if "=" in part)
        kind = fields.get("type", "")
        claims = self.arm.token_claims(fields.get("sig", ""), self.audience) if kind == "aad" else None
        principal = claims["oid"] if claims else None
        if kind in ("master", "resource"):
            answer = http_answer(401, "Unauthorized", LOCAL_AUTH_DISABLED)
        elif claims is None:
            answer = http_answer(401, "Unauthorized", "The input authorization token can't serve the request: "
                                 "an AAD token issued for this account is required.")
        elif not self._permitted(principal, path, reading=method in _READ_METHODS or (
                request.header(b"x-ms-documentdb-isquery") or b"").lower() == b"true"):
            answer = http_answer(403, "Forbidden", (
                f"Request blocked by Auth {self.account} : Request is blocked because principal [{principal}] does "
                f"not have required RBAC permissions to perform action on resource [{path}]."),
                {"x-ms-substatus": "5301"})
        else:
            answer = None
        status = 200 if answer is None else int(answer.split(b" ", 2)[1])
        self.decisions.append(Decision(kind, principal, method, path, status))
        return answer

    def _permitted(self, principal: str, path: str, *, reading: bool) -> bool:
        """Whether an assignment of ``principal`` covers ``path`` (a read: with either role)."""
        resource = "/" + path.strip("/").lower()
        account_id = (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                      f"/providers/Microsoft.DocumentDB/databaseAccounts/{self.account}").lower()
        roles = {DATA_READER, DATA_CONTRIBUTOR} if reading else {DATA_CONTRIBUTOR}
        for assignment in self.arm.role_assignments(self.subscription, self.resource_group, self.account).values():
            if assignment["principalId"].lower() != principal.lower():
                continue
            if resource == "/":  # the account read: any assignment in the account
                return True
            scope = assignment["scope"].lower().rstrip("/").removeprefix(account_id)
            if assignment["roleDefinitionId"].lower().rsplit("/", 1)[-1] in roles and \
                    (resource + "/").startswith(scope + "/"):
                return True
        return False
