"""The Azure identities the operator signs in with, as azure-identity async credentials.

A CosmosEtcdCluster either names a Secret with a service principal (``clientId``, ``clientSecret``,
``tenantId``: what ``az ad sp create-for-rbac`` prints) or names nothing, and then the operator's
own identity is used through ``DefaultAzureCredential`` (workload identity in a pod: the
``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_FEDERATED_TOKEN_FILE`` that the webhook injects).

Credentials are cached per identity so that every cluster using the same principal shares one token
cache (one sign-in, not one per reconcile). A changed secret is a new identity; the credentials it
replaces stay open until :meth:`Credentials.close`, because a reconcile may still be using them.
Secret values are kept only inside the credential objects: errors name the Secret's key, never
its value, and the cache key holds a digest of the secret, not the secret.

:func:`sign_in` is the ``Credentials`` part of a pass: it reads the named Secret and asks for one
token, so that a wrong secret or an unreachable authority shows in that part's condition rather
than as an error of whichever Azure call comes next.
"""
from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError as AzureCoreError
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential, WorkloadIdentityCredential

from cosmos_etcd_operator.cloud import AzureCloud
from cosmos_etcd_operator.conditions import CREDENTIALS
from cosmos_etcd_operator.kubeapi import object_path
from cosmos_etcd_operator.spec import SERVICE_PRINCIPAL_KEYS, ClusterSpec, InvalidSpec

if TYPE_CHECKING:  # the pass's context holds this module's Credentials: imported for annotations only
    from cosmos_etcd_operator.reconciliation import Reconciliation

# The token endpoint is called rarely (tokens live about an hour); a failing one should surface in
# seconds so that the reconcile reports it, not after azure-core's default ten retries.
TOKEN_REQUEST_OPTIONS = {"retry_total": 2, "retry_backoff_factor": 0.5, "retry_backoff_max": 4,
                         "connection_timeout": 10, "read_timeout": 30}


# Set in pods with a workload identity, with AZURE_CLIENT_ID and AZURE_TENANT_ID.
FEDERATED_TOKEN_FILE_VARIABLE = "AZURE_FEDERATED_TOKEN_FILE"


class InvalidCredentials(InvalidSpec):
    """The service principal Secret lacks a key or has an empty one; the message names the key."""


def service_principal(data: Mapping[str, str | bytes], secret_name: str) -> tuple[str, str, str]:
    """(tenantId, clientId, clientSecret) from a Secret's decoded data; checks every key is there."""
    values = {}
    for key in SERVICE_PRINCIPAL_KEYS:
        value = data.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str) or not value.strip():
            state = "is missing" if value is None else "is empty"
            raise InvalidCredentials(f"Secret {secret_name!r}: key {key!r} {state}; a service principal Secret "
                                     f"needs {', '.join(SERVICE_PRINCIPAL_KEYS)}")
        values[key] = value.strip()
    return values["tenantId"], values["clientId"], values["clientSecret"]


class Credentials:
    """One credential per identity for one cloud; ``async with`` or :meth:`close` at shutdown."""

    def __init__(self, cloud: AzureCloud):
        self.cloud = cloud
        self._cache: dict[tuple[str, ...], AsyncTokenCredential] = {}
        self._replaced: list[AsyncTokenCredential] = []

    def for_service_principal(self, data: Mapping[str, str | bytes], secret_name: str) -> AsyncTokenCredential:
        tenant, client_id, secret = service_principal(data, secret_name)
        key = ("service-principal", tenant, client_id, hashlib.sha256(secret.encode()).hexdigest())
        if key not in self._cache:
            for old in [old for old in self._cache if old[:3] == key[:3]]:
                self._replaced.append(self._cache.pop(old))
            self._cache[key] = ClientSecretCredential(
                tenant, client_id, secret, authority=self.cloud.authority_host,
                connection_verify=self.cloud.connection_verify, **TOKEN_REQUEST_OPTIONS)
        return self._cache[key]

    def default(self) -> AsyncTokenCredential:
        """The operator's own identity: the pod's workload identity if it has one, else whatever
        DefaultAzureCredential finds (environment, managed identity...)."""
        key = ("default",)
        if key not in self._cache:
            options = {"authority": self.cloud.authority_host, "connection_verify": self.cloud.connection_verify,
                       **TOKEN_REQUEST_OPTIONS}
            # DefaultAzureCredential does not hand `authority` to its WorkloadIdentityCredential (it
            # reads AZURE_AUTHORITY_HOST only), which would send a custom cloud's pods to the public
            # authority: build the workload identity credential ourselves when the pod has one.
            if os.environ.get(FEDERATED_TOKEN_FILE_VARIABLE):
                self._cache[key] = WorkloadIdentityCredential(**options)
            else:
                self._cache[key] = DefaultAzureCredential(**options)
        return self._cache[key]

    async def close(self) -> None:
        credentials = [*self._cache.values(), *self._replaced]
        self._cache.clear()
        self._replaced.clear()
        for credential in credentials:
            await credential.close()

    async def __aenter__(self) -> "Credentials":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


async def sign_in(step: Reconciliation, spec: ClusterSpec) -> AsyncTokenCredential:
    """The ``Credentials`` part of a pass: the credential of the identity the spec names, which has
    just obtained a token."""
    context = step.context
    secret_name = spec.credentials.service_principal_secret
    if secret_name is None:
        credential, who = context.credentials.default(), "the operator's own identity"
    else:
        secret = await step.read(CREDENTIALS, object_path("v1", "Secret", step.namespace, secret_name))
        if secret is None:
            step.fail(CREDENTIALS, "SecretNotFound", f"Secret {secret_name!r} not found in namespace "
                      f"{step.namespace}", retryable=True)
        data = {key: base64.b64decode(value).decode("utf-8", errors="replace")
                for key, value in (secret.get("data") or {}).items()}
        try:
            credential = context.credentials.for_service_principal(data, secret_name)
        except InvalidCredentials as e:
            step.fail(CREDENTIALS, "InvalidSecret", str(e), retryable=True)
        who = f"service principal {data['clientId']} (Secret {secret_name})"
    try:
        await credential.get_token(context.cloud.credential_scope)
    except ClientAuthenticationError as e:  # refused by the authority, or no identity at all
        step.fail(CREDENTIALS, "AuthenticationFailed", _first_line(e.message), retryable=True)
    except AzureCoreError as e:  # the authority did not answer
        step.fail(CREDENTIALS, "TokenRequestFailed", _first_line(e.message), retryable=True)
    step.ready(CREDENTIALS, "SignedIn", f"signed in to {context.cloud.resource_manager} as {who}")
    return credential


def _first_line(message: str | None) -> str:
    return (message or "").strip().splitlines()[0][:500] if (message or "").strip() else "authentication failed"
