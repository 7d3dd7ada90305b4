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
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential, WorkloadIdentityCredential

from cosmos_etcd_operator.cloud import AzureCloud
from cosmos_etcd_operator.spec import SERVICE_PRINCIPAL_KEYS, InvalidSpec

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
