"""The ``TLS`` part of the reconciliation: the managed PKI of one CosmosEtcdCluster.

``spec.shim.tls.mode`` says how the shim serves its clients:

* ``Managed`` (the default of new objects): the operator is the cluster's certificate authority.
  It keeps three Secrets, all owned by the CosmosEtcdCluster:

  - ``<name>-etcd-ca``: the signing CA (``tls.crt``, ``tls.key``) and the trust bundle
    (``ca.crt``, every CA clients and the shim trust now). Only the operator reads it.
  - ``<name>-etcd-server`` (``kubernetes.io/tls``): the shim's certificate for every name the
    Service answers to (``<name>``, ``<name>.<ns>``, ``<name>.<ns>.svc``,
    ``<name>.<ns>.svc.cluster.local``) plus ``spec.shim.tls.extraNames``, its key, and the bundle.
    The Deployment mounts it and runs the shim with ``--client-cert-auth``.
  - ``<name>-etcd-client`` (``kubernetes.io/tls``): exactly ``ca.crt``, ``tls.crt`` and
    ``tls.key``, the files of kube-apiserver's ``--etcd-cafile``, ``--etcd-certfile`` and
    ``--etcd-keyfile``. The certificate's CN is ``spec.shim.tls.clientCommonName``
    (``kube-apiserver`` by default), which etcd's auth takes as the user name.

* ``Secret``: bring your own ``kubernetes.io/tls`` Secret (``spec.shim.tls.secretName``, e.g. from
  cert-manager); this part only checks that it exists.
* ``Disabled``: plain text. Only ever an explicit choice, or an object created before managed TLS
  (below); either way the ``PlainText`` condition and a Warning event show it.

Keys and lifetimes, as a careful CA (and kubeadm) chooses them: ECDSA P-256 keys everywhere (128-bit
security, accepted by every etcd client: Go's, and gRPC's C core, which offers no P-521), SHA-256
signatures. The CA lives 10 years: rotating it means every client takes a new trust bundle, which
should be rare, and its key never leaves the operator's Secret. Leaf certificates live one year.
Every certificate is renewed at two thirds of its lifetime (``Policy.renew_fraction``), which leaves
a third (four months for a leaf) for clients that only reload their files when they restart. Leaf
certificates start five minutes in the past for clocks that lag, and never outlive their CA. Each
CA has a name of its own (its serial's first digits), so that an old and a new CA side by side in
a bundle never share a subject; leaves carry the Authority Key Identifier of theirs.

CA rotation never leaves a client without trust. Its three steps are each a pass of this part,
with at least ``Policy.overlap`` between them (time for the kubelet to update mounted Secrets and
for clients to reload or restart):

1. the CA is due: a successor CA is made and the bundle (``ca.crt`` of all three Secrets) trusts
   both; the old CA still signs, so a leaf renewed meanwhile is one every client trusts already;
2. ``overlap`` after the bundle changed: the successor signs, and the server and client
   certificates are issued again by it (both sides trust both CAs, so old and new leaves meet
   trust on either side, whichever Secret a pod or client has read last);
3. ``overlap`` after that: the old CA leaves the bundle.

The CA Secret keeps the successor in ``next.crt``/``next.key`` during step 1, and its annotations
``cosmosetcd.io/trust-changed-at`` and ``cosmosetcd.io/leaves-moved-at`` say when steps 1 and 2
happened, so that an operator restart resumes the rotation where it was.

Upgrades: the CRD gives ``mode`` no default (a schema default is applied to stored objects when
they are read, which would switch a running plain-text cluster to TLS under its kube-apiserver).
The operator decides (:func:`mode_in_effect`) and records the mode in force in ``status.tls.mode``
at each pass: a mode in the spec wins; then ``tls.secretName`` (``Secret``, as before); then the
recorded mode; an object that an earlier operator already served in plain text (its
``status.endpoint`` is ``http://``) stays ``Disabled`` with a condition saying how to opt in; any
other object gets ``Managed``.

In a pass, :func:`reconcile_part` sets the ``TLS`` and ``PlainText`` conditions and ``status.tls``
from :func:`reconcile`, and :func:`record_mode` records the mode in force before any part runs.

Nothing here logs, records or posts a key: events and conditions name Secrets, serials and dates.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kopf
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cosmos_etcd_operator import children
from cosmos_etcd_operator.conditions import PLAIN_TEXT, TLS, TRUE, Condition
from cosmos_etcd_operator.kubeapi import Kube, KubeError, contains, object_path
from cosmos_etcd_operator.spec import ClusterSpec, ShimTLS, TLSMode

if TYPE_CHECKING:  # the pass's context holds this module's Policy: imported for annotations only
    from cosmos_etcd_operator.reconciliation import Reconciliation

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
NEXT_CERT_FILE, NEXT_KEY_FILE = "next.crt", "next.key"  # the CA Secret's successor CA during a rotation
TRUST_CHANGED_AT = "cosmosetcd.io/trust-changed-at"
LEAVES_MOVED_AT = "cosmosetcd.io/leaves-moved-at"
BACKDATE = datetime.timedelta(minutes=5)
DAY = datetime.timedelta(days=1)
ROTATION = "CA rotation"  # why a leaf is issued again in step 2


@dataclasses.dataclass(frozen=True)
class Policy:
    """Lifetimes of the managed certificates (the operator's ``--tls-*`` flags)."""
    ca_lifetime: datetime.timedelta = 3652 * DAY
    leaf_lifetime: datetime.timedelta = 365 * DAY
    renew_fraction: float = 2 / 3
    overlap: datetime.timedelta = 7 * DAY


def ca_secret_name(name: str) -> str:
    return f"{name}-etcd-ca"


def server_secret_name(name: str) -> str:
    return f"{name}-etcd-server"


def client_secret_name(name: str) -> str:
    return f"{name}-etcd-client"


def mode_in_effect(tls: ShimTLS, status: Mapping[str, Any]) -> tuple[TLSMode, bool]:
    """The mode to serve and whether the spec chose it (see the module docstring)."""
    if tls.mode is not None:
        return tls.mode, True
    if tls.secret_name is not None:
        return TLSMode.SECRET, True
    recorded = (status.get("tls") or {}).get("mode")
    if recorded in {mode.value for mode in TLSMode}:
        return TLSMode(recorded), False
    if str(status.get("endpoint", "")).startswith("http://"):
        return TLSMode.DISABLED, False
    return TLSMode.MANAGED, False


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the part did: its condition (and ``PlainText``'s), ``status.tls``, what the Deployment
    serves, events to post."""
    condition: Condition
    status: dict[str, Any]
    serving: children.ServingTLS | None
    events: tuple[tuple[str, str, str], ...] = ()
    plain_text: Condition | None = None


class TLSError(Exception):
    """The part cannot finish now (a Kubernetes call failed, a Secret is missing); retryable."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


async def reconcile(kube: Kube, owner: Mapping[str, Any], tls: ShimTLS, status: Mapping[str, Any], *,
                    policy: Policy, now: datetime.datetime) -> Outcome:
    """Read, compare and change the cluster's TLS material; raises :class:`TLSError`."""
    mode, chosen = mode_in_effect(tls, status)
    if mode is TLSMode.DISABLED:
        how = "spec.shim.tls.mode is Disabled" if chosen else (
            "this cluster served plain text before the operator managed TLS, and spec.shim.tls.mode is not set")
        message = (f"{how}: clients reach etcd unencrypted and unauthenticated; to switch to mutual TLS set "
                   f"spec.shim.tls.mode: Managed, then point kube-apiserver at https:// with the files of Secret "
                   f"{client_secret_name(owner['metadata']['name'])} (README: TLS modes)")
        return Outcome(Condition(TLS, TRUE, "Disabled", message), {"mode": mode.value}, None,
                       plain_text=Condition(PLAIN_TEXT, TRUE, "Disabled" if chosen else "NotOptedIn", message))
    if mode is TLSMode.SECRET:
        if tls.secret_name is None:
            raise TLSError("SecretNameMissing", "the mode in force is Secret but spec.shim.tls.secretName is not "
                                                "set: name the Secret, or set spec.shim.tls.mode")
        path = object_path("v1", "Secret", owner["metadata"]["namespace"], tls.secret_name)
        if await _get(kube, path) is None:
            raise TLSError("SecretNotFound", f"Secret {tls.secret_name!r} (spec.shim.tls.secretName) not found")
        return Outcome(Condition(TLS, TRUE, "UserSecret", f"serving the certificate of Secret {tls.secret_name}"),
                       {"mode": mode.value}, children.ServingTLS(tls.secret_name, tls.client_cert_auth))
    return await _Managed(kube, owner, tls, policy, now).run()


def record_mode(step: Reconciliation, spec: ClusterSpec) -> None:
    """The TLS mode in force goes to status at the first part, before any part can stop the pass: a
    later operator tells an object it created from one an earlier operator served in plain text."""
    mode, _ = mode_in_effect(spec.shim.tls, step.status)
    step.new_status["tls"] = {**(step.status.get("tls") or {}), "mode": mode.value}


async def reconcile_part(step: Reconciliation, spec: ClusterSpec) -> children.ServingTLS | None:
    """The ``TLS`` part of a pass: its conditions, ``status.tls`` and events; what the shim serves."""
    try:
        outcome = await reconcile(step.kube, step.body, spec.shim.tls, step.status,
                                  policy=step.context.tls_policy, now=step.context.clock())
    except TLSError as e:
        step.fail(TLS, e.reason, e.message, retryable=True)
    step.conditions.set(outcome.condition)
    if outcome.plain_text is None:
        step.conditions.remove(PLAIN_TEXT)
    else:
        step.conditions.set(outcome.plain_text)
    step.new_status["tls"] = outcome.status
    for type_, reason, message in outcome.events:
        kopf.event(step.body, type=type_, reason=reason, message=message)
    return outcome.serving


# -- the managed PKI -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Authority:
    """The CA Secret's content: the CA that signs leaves, the trust bundle, during the first step of
    a rotation its successor (already trusted, not yet signing), and the rotation's timestamps."""
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    bundle: list[x509.Certificate]
    trust_changed_at: datetime.datetime
    successor: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
    leaves_moved_at: datetime.datetime | None = None

    @property
    def rotating(self) -> bool:
        return self.successor is not None or len(self.bundle) > 1


class _Managed:
    def __init__(self, kube: Kube, owner: Mapping[str, Any], tls: ShimTLS, policy: Policy, now: datetime.datetime):
        self.kube, self.owner, self.tls, self.policy, self.now = kube, owner, tls, policy, now
        self.name, self.namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
        self.events: list[tuple[str, str, str]] = []

    async def run(self) -> Outcome:
        stored_ca = await _get(self.kube, self._path(ca_secret_name(self.name)))
        leaves = {
            # The replicas also present the server certificate to one another on the peer listener
            # (followers forward writes to the elected leader): it is a client certificate too.
            "server": (server_secret_name(self.name), self._server_names(),
                       (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH), self.name),
            "client": (client_secret_name(self.name), None, (ExtendedKeyUsageOID.CLIENT_AUTH,),
                       self.tls.client_common_name),
        }
        stored = {kind: await _get(self.kube, self._path(secret)) for kind, (secret, *_rest) in leaves.items()}
        authority = self._authority(stored_ca, issued_before=stored_ca is not None or any(stored.values()))
        current = {kind: _read_leaf(secret) for kind, secret in stored.items()}
        moved = False  # a leaf moved to the new CA in this pass
        for kind, (secret, names, usage, common_name) in leaves.items():
            why = self._reissue_reason(current[kind], authority, names, common_name, usage)
            moved = moved or why == ROTATION
            if why:
                leaf = self._issue(authority, common_name, names, usage)
                if current[kind] is not None:
                    self.events.append(("Normal", "CertificateIssued",
                                        f"{kind} certificate in Secret {secret} issued again ({why}), "
                                        f"serial {leaf[0].serial_number:x}"))
                current[kind] = leaf
        self._finish_rotation(authority, moved)
        await self._write(self._ca_secret(authority), stored_ca)
        for kind, (secret, *_rest) in leaves.items():
            certificate, key = current[kind]
            await self._write(self._leaf_secret(secret, certificate, key, authority.bundle), stored[kind])
        return self._outcome(authority, {kind: leaf[0] for kind, leaf in current.items()})

    def _server_names(self) -> list[str]:
        service = [self.name, f"{self.name}.{self.namespace}", f"{self.name}.{self.namespace}.svc",
                   f"{self.name}.{self.namespace}.svc.cluster.local"]
        return service + [name for name in self.tls.extra_names if name not in service]

    def _authority(self, stored: Mapping[str, Any] | None, *, issued_before: bool) -> _Authority:
        """The stored CA, moved on by the rotation's steps 1 and 2 when they are due, or a new one
        (``issued_before``: the cluster had a CA, which clients may trust)."""
        authority = _read_authority(stored)
        if authority is None:
            authority = self._new_authority()
            if issued_before:  # clients that trust the lost CA cannot verify the shim any more
                self.events.append(("Warning", "CAReplaced", f"Secret {ca_secret_name(self.name)} was missing or "
                                    f"held no usable CA: {_ca_label(authority.certificate)} issued; clients "
                                    f"need the new ca.crt of Secret {client_secret_name(self.name)}"))
        elif not authority.rotating and self.now >= _renewal_time(authority.certificate, self.policy):
            successor = self._new_authority()  # step 1: trusted now, signing after the overlap
            authority.successor = successor.certificate, successor.key
            authority.bundle, authority.trust_changed_at = [authority.certificate, successor.certificate], self.now
            self.events.append(("Normal", "CARotationStarted", (
                f"{_ca_label(authority.certificate)} is due for renewal: the bundle now trusts "
                f"{_ca_label(successor.certificate)} too, which signs leaf certificates from "
                f"{_timestamp(self.now + self.policy.overlap)}")))
        elif authority.successor is not None and self.now >= authority.trust_changed_at + self.policy.overlap:
            authority.certificate, authority.key = authority.successor  # step 2: the leaves follow below
            authority.successor = None
        return authority

    def _finish_rotation(self, authority: _Authority, moved: bool) -> None:
        """Step 3: the old CA leaves the bundle ``overlap`` after the last leaf moved to the new one
        (counted again if a leaf had to move later, e.g. after a failed write)."""
        if authority.successor is not None or len(authority.bundle) == 1:
            return
        if moved or authority.leaves_moved_at is None:
            authority.leaves_moved_at = self.now
        elif self.now >= authority.leaves_moved_at + self.policy.overlap:
            old = [ca for ca in authority.bundle if ca != authority.certificate]
            authority.bundle, authority.trust_changed_at, authority.leaves_moved_at = \
                [authority.certificate], self.now, None
            self.events.append(("Normal", "CARotated", "CA rotation complete: the bundle no longer trusts "
                                + ", ".join(_ca_label(ca) for ca in old)))

    def _new_authority(self) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        # The serial's digits first: two CAs of one cluster never share a subject.
        common_name = f"{serial:x}"[:16] + f" etcd CA {self.namespace}/{self.name}"
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cosmos-etcd"),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(public)
            .serial_number(serial).not_valid_before(self.now - BACKDATE)
            .not_valid_after(self.now + self.policy.ca_lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256()))
        return _Authority(certificate, key, [certificate], self.now)

    def _reissue_reason(self, leaf, authority: _Authority, names: list[str] | None, common_name: str,
                        usage: tuple[x509.ObjectIdentifier, ...]) -> str | None:
        if leaf is None:
            return "missing or unreadable"
        certificate, _ = leaf
        if not _issued_by(certificate, authority.certificate):
            return ROTATION if any(_issued_by(certificate, ca) for ca in authority.bundle) else \
                "not issued by the cluster's CA"
        if self.now >= _renewal_time(certificate, self.policy):
            return "due for renewal"
        if _common_name(certificate) != common_name:
            return "common name changed"
        if names is not None and _subject_names(certificate) != sorted(names):
            return "names changed"
        if _usages(certificate) != set(usage):
            return "key usages changed"  # a server certificate issued before it was a client one too
        return None

    def _issue(self, authority: _Authority, common_name: str, names: list[str] | None,
               usage: tuple[x509.ObjectIdentifier, ...]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(authority.certificate.subject).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(self.now - BACKDATE)
            .not_valid_after(min(self.now + self.policy.leaf_lifetime, authority.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.certificate.public_key()),
                           critical=False))
        if names is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                                            critical=False)
        return builder.sign(authority.key, hashes.SHA256()), key

    def _ca_secret(self, authority: _Authority) -> dict[str, Any]:
        annotations = {TRUST_CHANGED_AT: _timestamp(authority.trust_changed_at)}
        if authority.leaves_moved_at is not None:
            annotations[LEAVES_MOVED_AT] = _timestamp(authority.leaves_moved_at)
        data = {CERT_FILE: _b64(_pem(authority.certificate)), KEY_FILE: _b64(_key_pem(authority.key)),
                CA_FILE: _b64(_bundle_pem(authority.bundle))}
        if authority.successor is not None:
            certificate, key = authority.successor
            data |= {NEXT_CERT_FILE: _b64(_pem(certificate)), NEXT_KEY_FILE: _b64(_key_pem(key))}
        return children.secret(self.owner, ca_secret_name(self.name), type_="Opaque", annotations=annotations,
                               data=data)

    def _leaf_secret(self, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                     bundle: list[x509.Certificate]) -> dict[str, Any]:
        return children.secret(self.owner, name, type_="kubernetes.io/tls", data={
            CA_FILE: _b64(_bundle_pem(bundle)), CERT_FILE: _b64(_pem(certificate)), KEY_FILE: _b64(_key_pem(key))})

    async def _write(self, desired: dict[str, Any], stored: dict[str, Any] | None) -> None:
        """Create a missing Secret, or merge-patch a stored one to exactly the desired keys and
        rotation annotations (a key or annotation no longer wanted is removed); nothing if equal."""
        metadata = desired["metadata"]
        try:
            if stored is None:
                await self.kube.create(object_path("v1", "Secret", self.namespace), desired)
                return
            annotations = {key: None for key in (TRUST_CHANGED_AT, LEAVES_MOVED_AT)
                           if key in (stored["metadata"].get("annotations") or {})}
            annotations |= metadata.get("annotations") or {}
            data = {key: None for key in stored.get("data") or {} if key not in desired["data"]} | desired["data"]
            patch = {"metadata": {"labels": metadata["labels"], "annotations": annotations,
                                  "ownerReferences": metadata["ownerReferences"]}, "data": data}
            if contains(stored, {"metadata": {k: v for k, v in patch["metadata"].items() if k != "annotations"},
                                 "data": desired["data"]}) and set(stored.get("data") or {}) == set(desired["data"]) \
                    and all((stored["metadata"].get("annotations") or {}).get(k) == v for k, v in annotations.items()):
                return
            await self.kube.merge_patch(self._path(metadata["name"]), patch)
        except KubeError as e:
            raise TLSError(e.reason, f"Secret {metadata['name']}: {e}") from None

    def _path(self, secret: str) -> str:
        return object_path("v1", "Secret", self.namespace, secret)

    def _outcome(self, authority: _Authority, leaves: dict[str, x509.Certificate]) -> Outcome:
        client = client_secret_name(self.name)
        status = {"mode": TLSMode.MANAGED.value, "clientSecret": client,
                  "caNotAfter": _timestamp(authority.certificate.not_valid_after_utc),
                  "serverNotAfter": _timestamp(leaves["server"].not_valid_after_utc),
                  "clientNotAfter": _timestamp(leaves["client"].not_valid_after_utc)}
        message = (f"mutual TLS with the operator's CA; kube-apiserver's --etcd-cafile, --etcd-certfile and "
                   f"--etcd-keyfile are ca.crt, tls.crt and tls.key of Secret {client} (CN "
                   f"{self.tls.client_common_name})")
        reason = "Managed"
        if authority.rotating:
            reason = "RotatingCA"
            step = ("leaf certificates move to the new CA" if authority.successor is not None
                    else "the old CA leaves the bundle")
            since = authority.leaves_moved_at or authority.trust_changed_at
            message += f"; CA rotation in progress: {step} from {_timestamp(since + self.policy.overlap)}"
        return Outcome(Condition(TLS, TRUE, reason, message), status,
                       children.ServingTLS(server_secret_name(self.name), client_cert_auth=True), tuple(self.events))


# -- reading what is stored ------------------------------------------------------------------------

async def _get(kube: Kube, path: str) -> dict[str, Any] | None:
    try:
        return await kube.get(path)
    except KubeError as e:
        raise TLSError(e.reason, str(e)) from None


def _data(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(key)
    try:
        return base64.b64decode(value) if value else None
    except ValueError:
        return None


def _read_authority(secret: Mapping[str, Any] | None) -> _Authority | None:
    """The CA Secret's content, or None when it is missing or does not hold a usable CA."""
    certificate_pem, key_pem, bundle_pem = (_data(secret, key) for key in (CERT_FILE, KEY_FILE, CA_FILE))
    if not (certificate_pem and key_pem and bundle_pem):
        return None
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        bundle = x509.load_pem_x509_certificates(bundle_pem)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(certificate, key) or \
            certificate not in bundle:
        return None
    annotations = secret["metadata"].get("annotations") or {}
    # A successor that is lost or unsound is left out: step 3 then ends the rotation, and the due CA starts another.
    successor = _read_leaf(secret, NEXT_CERT_FILE, NEXT_KEY_FILE)
    return _Authority(certificate, key, bundle, _parse_timestamp(annotations.get(TRUST_CHANGED_AT)) or
                      certificate.not_valid_before_utc, successor if successor and successor[0] in bundle else None,
                      _parse_timestamp(annotations.get(LEAVES_MOVED_AT)))


def _read_leaf(secret: Mapping[str, Any] | None, cert_file: str = CERT_FILE, key_file: str = KEY_FILE):
    """(certificate, key) of a Secret whose key is its certificate's, else None."""
    certificate_pem, key_pem = _data(secret, cert_file), _data(secret, key_file)
    if not (certificate_pem and key_pem):
        return None
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return None
    return (certificate, key) if _same_key(certificate, key) else None


def _same_key(certificate: x509.Certificate, key) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _renewal_time(certificate: x509.Certificate, policy: Policy) -> datetime.datetime:
    issued = certificate.not_valid_before_utc + BACKDATE
    return issued + (certificate.not_valid_after_utc - issued) * policy.renew_fraction


def _common_name(certificate: x509.Certificate) -> str | None:
    found = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else None


def _subject_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sorted([*names.get_values_for_type(x509.DNSName),
                   *(str(address) for address in names.get_values_for_type(x509.IPAddress))])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _usages(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _ca_label(certificate: x509.Certificate) -> str:
    return f"CA {certificate.serial_number:x} (valid until {_timestamp(certificate.not_valid_after_utc)})"


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _bundle_pem(bundle: list[x509.Certificate]) -> bytes:
    return b"".join(_pem(certificate) for certificate in bundle)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_timestamp(text: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc) \
            if text else None
    except ValueError:
        return None
