"""Fixtures of the operator tests.

The Azure side (names start with ``arm_``):

* ``arm_stand_in``: a running :class:`tests.harness.arm.ArmStandIn` (HTTPS, in the test's event
  loop) that knows subscription ``arm.SUBSCRIPTION`` with resource group ``arm.RESOURCE_GROUP``.
  Its control API (fail_next, hold/release, set_throughput, rotate_keys, add_account, requests)
  is described in tests/harness/arm.py.
* ``arm_service_principal``: a service principal registered there, as the data of the Secret a
  CosmosEtcdCluster names in ``spec.azure.credentials.servicePrincipalSecretRef``
  (``{"clientId", "clientSecret", "tenantId"}``, plain strings).
* ``arm_cloud``: the :class:`cosmos_etcd_operator.cloud.AzureCloud` that points at it — what
  ``cosmos-etcd operator --cloud custom --arm-endpoint {arm_stand_in.url}
  --authority-host {arm_stand_in.authority_host}`` with the CA file ``arm_stand_in.ca_file`` gives.
* ``arm_spec``: a parsed ClusterSpec for that subscription and resource group (account ``tenant-a-etcd``).
* ``arm_credentials``: a :class:`cosmos_etcd_operator.credentials.Credentials` cache for ``arm_cloud``.
* ``arm_resources``: :class:`cosmos_etcd_operator.arm.CosmosResources` signed in as
  ``arm_service_principal``, with ``polling_interval=0``.

The Kubernetes side:

* ``kube_api``: the Kubernetes API (:class:`tests.harness.kube.KubeAPI`, kmock with admission by
  the CRD), with ``KUBECONFIG`` pointing at it; ``kube_api_calls``: every call made to it.
* ``start_operator(**options)``: starts the real operator against both (options of
  :func:`tests.harness.operator.operator_flags`); every operator started is stopped at teardown.
"""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import cloud, credentials, spec
from cosmos_etcd_operator.arm import CosmosResources
from tests.harness import arm
from tests.harness.kube import kube_api, kube_api_calls  # noqa: F401 (fixtures)
from tests.harness.operator import operators


@pytest.fixture
async def arm_stand_in():
    async with arm.ArmStandIn() as stand_in:
        stand_in.add_resource_group(arm.SUBSCRIPTION, arm.RESOURCE_GROUP)
        yield stand_in


@pytest.fixture
def arm_service_principal(arm_stand_in) -> dict[str, str]:
    return arm_stand_in.add_service_principal()


@pytest.fixture
def arm_cloud(arm_stand_in) -> cloud.AzureCloud:
    return cloud.resolve(cloud.CUSTOM, arm_endpoint=arm_stand_in.url, authority_host=arm_stand_in.authority_host,
                         ca_file=arm_stand_in.ca_file, environ={})


@pytest.fixture
def arm_spec() -> spec.ClusterSpec:
    return spec.parse({
        "azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP, "location": "westeurope",
                  "credentials": {"servicePrincipalSecretRef": {"name": "azure-sp"}}},
        "account": {"name": "tenant-a-etcd", "tags": {"team": "platform"}},
        "throughput": {"mode": "Manual", "requestUnits": 400},
    }, name="tenant-a")


@pytest.fixture
async def arm_credentials(arm_cloud):
    async with credentials.Credentials(arm_cloud) as cache:
        yield cache


@pytest.fixture
async def arm_resources(arm_credentials, arm_service_principal, arm_cloud):
    credential = arm_credentials.for_service_principal(arm_service_principal, "azure-sp")
    async with CosmosResources(credential, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
        yield resources


@pytest.fixture
async def start_operator(kube_api, arm_stand_in):
    async with operators(arm_stand_in) as start:
        yield start
