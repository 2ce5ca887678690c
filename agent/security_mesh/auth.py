"""Who may do what: certificate chains, roles and groups, and CA rotation.

The fleet CA signs device and operator certificates; a certificate counts
only if a CA the device trusts *now* issued it, its validity window holds,
and (for the action at hand) its role and groups fit. The chain itself is
checked in :mod:`agent.identity.trust` (below the components, so the signed
channel can use it); this module adds the policy-level checks on top.

**CA rotation.** A policy's ``trust`` section lists the CA keys devices
trust, each with an optional end::

    {"trust": {"ca": [{"key": "<new CA, base64url>"},
                      {"key": "<old CA>", "until_ms": 1790000000000}]}}

While the old key's window is open, certificates from either CA verify; the
fleet re-enrolls device by device; after ``until_ms`` only the new CA's
certificates do. A policy with no ``trust`` section leaves the device's own
``ca.pub`` as its only CA. Apply the result with
``trust.set_anchors(anchors_from_policy(policy, identity.ca_public))``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.compat import b64url_decode
from agent.errors import CertificateInvalid, PolicyRejected
from agent.identity.certificate import Certificate
from agent.identity.trust import TrustAnchor, TrustStore, verify_chain

OPERATOR = "operator"


def require_role(cert: Certificate, *roles: str) -> Certificate:
    """``cert`` if its role is one of ``roles``, else :class:`CertificateInvalid`."""
    if cert.role not in roles:
        wanted = " or ".join(repr(r) for r in roles)
        raise CertificateInvalid(f"{cert.subject!r} has role {cert.role!r}; this needs {wanted}")
    return cert


def require_group(cert: Certificate, group: str) -> Certificate:
    """``cert`` if it names ``group`` among its groups, else :class:`CertificateInvalid`."""
    if group not in cert.groups:
        held = ", ".join(cert.groups) or "none"
        raise CertificateInvalid(
            f"{cert.subject!r} is not in group {group!r} (its groups: {held})"
        )
    return cert


def check_certificate(
    cert: Certificate | dict[str, Any],
    anchors: Iterable[TrustAnchor],
    now_ms: int,
    *,
    fleet: str,
    roles: tuple[str, ...] = (),
    group: str | None = None,
) -> Certificate:
    """The whole check: fleet CA → certificate, validity window, fleet, role, group.

    ``roles`` empty means any role. Raises :class:`CertificateInvalid`
    saying which check failed; nothing is cached (see :class:`TrustStore`
    for the per-message path).
    """
    if isinstance(cert, dict):
        cert = Certificate.from_dict(cert)
    verify_chain(cert, anchors, now_ms, fleet=fleet)
    if roles:
        require_role(cert, *roles)
    if group is not None:
        require_group(cert, group)
    return cert


def signer_certificate(trust: TrustStore, subject: str, *roles: str) -> Certificate:
    """The certificate of the device that signed an accepted envelope, with its role checked.

    The channel has already verified the chain and the signature, so this
    is a look-up; ``roles`` empty means any role.
    """
    cert = trust.certificate(subject)
    if cert is None:
        raise CertificateInvalid(f"no certificate known for {subject!r}")
    return require_role(cert, *roles) if roles else cert


def anchors_from_policy(policy: Mapping[str, Any], own_ca: bytes) -> tuple[TrustAnchor, ...]:
    """The CA keys a policy tells devices to trust (its ``trust.ca`` list).

    No ``trust`` section: ``own_ca`` (the device's ``ca.pub``) alone. Raises
    :class:`PolicyRejected` naming the entry at fault. At least one CA must
    have no ``until_ms``: when every window ended, no device would trust
    anyone, not even the operator who could push a fix.
    """
    section = policy.get("trust")
    if section is None:
        return (TrustAnchor(own_ca),)
    if not isinstance(section, Mapping) or set(section) != {"ca"}:
        raise PolicyRejected('policy trust: expected {"ca": [...]}, got ' + f"{section!r:.80}")
    items = section["ca"]
    if not isinstance(items, list) or not items:
        raise PolicyRejected("policy trust.ca: expected a non-empty list of CA keys")
    anchors: list[TrustAnchor] = []
    for i, item in enumerate(items):
        anchors.append(_anchor(item, f"policy trust.ca[{i}]"))
    ids = [anchor.key_id for anchor in anchors]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PolicyRejected(f"policy trust.ca: CA key {duplicates[0]} is listed twice")
    if all(anchor.until_ms is not None for anchor in anchors):
        raise PolicyRejected(
            "policy trust.ca: every CA has an until_ms, so devices would trust no one once "
            "the last window ends; give the new CA no until_ms"
        )
    return tuple(anchors)


def _anchor(item: object, where: str) -> TrustAnchor:
    if not isinstance(item, Mapping) or "key" not in item or set(item) - {"key", "until_ms"}:
        raise PolicyRejected(
            f'{where}: expected {{"key": "<base64url Ed25519 key>", "until_ms": <optional '
            f"ms>}}, got {item!r:.80}"
        )
    try:
        key = b64url_decode(item["key"])
    except (TypeError, ValueError):
        key = b""
    if len(key) != 32:
        raise PolicyRejected(
            f"{where}.key: expected the base64url text of a 32-byte Ed25519 public key "
            f"(a ca.pub file), got {item['key']!r:.60}"
        )
    until = item.get("until_ms")
    if until is not None and (type(until) is not int or until < 0):
        raise PolicyRejected(f"{where}.until_ms: expected wall-clock ms, got {until!r:.40}")
    return TrustAnchor(key, until)
