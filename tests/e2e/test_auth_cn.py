"""The user of a request without a token is the common name of its verified client certificate
(with --client-cert-auth), as in etcd: the real etcdctl over mutual TLS against a real etcd 3.5.1
and the shim started with the same flags, every command compared.
"""
from __future__ import annotations

import pytest

from .conftest import shim_only
from .test_tls import both, client_flags, credentials, mtls_flags, pki, same_on_both  # noqa: F401

pytestmark = shim_only


@pytest.fixture
def mtls_auth_pair(pki, tmp_path):  # noqa: F811 - the fixture imported above
    with both(tmp_path, [*mtls_flags(pki), "--bcrypt-cost", "4"],
              credentials(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")) as servers:
        yield servers


def test_client_certificate_common_name_is_the_user(mtls_auth_pair, pki):  # noqa: F811
    etcd, shim = mtls_auth_pair
    alice = client_flags(pki)  # CN alice

    def ctl(*args: str, expect: int | None = None) -> tuple[int, str]:
        got = same_on_both(etcd, shim, *alice, *args)
        assert expect is None or got[0] == expect, f"etcdctl {' '.join(args)}: {got}"
        return got

    for command in (["user", "add", "root", "--new-user-password=rootpw"], ["user", "grant-role", "root", "root"],
                    ["role", "add", "tenant"], ["role", "grant-permission", "tenant", "readwrite", "/a/", "--prefix"],
                    ["user", "add", "alice", "--no-password"], ["user", "grant-role", "alice", "tenant"],
                    ["auth", "enable"]):
        ctl(*command, expect=0)
    ctl("put", "/a/x", "1", expect=0)  # as alice, from the certificate alone
    ctl("get", "/a/x", expect=0)
    assert "permission denied" in ctl("put", "/b/x", "1")[1]
    assert "permission denied" in ctl("user", "list")[1]
    ctl("user", "get", "alice", expect=0)  # a user may read itself
    # A token wins over the certificate: root by password, through alice's certificate.
    ctl("user", "list", "--user=root:rootpw", expect=0)
    ctl("put", "/b/x", "1", "--user=root:rootpw", expect=0)
    ctl("auth", "disable", "--user=root:rootpw", expect=0)
    ctl("put", "/b/y", "1", expect=0)
