"""Security mesh: the signed ledger, checkpoints peers cross-check, the fleet blocklist
and certificate checks (roles, groups, CA rotation)."""

from agent.security_mesh.auth import (
    anchors_from_policy,
    check_certificate,
    require_group,
    require_role,
    signer_certificate,
)
from agent.security_mesh.blocklist import BlockEntry, Blocklist, make_entry, merge_snapshot
from agent.security_mesh.cert_log import CertificateLog
from agent.security_mesh.checkpoints import Checkpoints
from agent.security_mesh.ledger import (
    GENESIS,
    AuthFailureTally,
    Ledger,
    LedgerEntry,
    LedgerReport,
    read_entries,
    verify_ledger,
)

__all__ = [
    "GENESIS", "AuthFailureTally", "BlockEntry", "Blocklist", "CertificateLog", "Checkpoints",
    "Ledger", "LedgerEntry", "LedgerReport", "anchors_from_policy", "check_certificate",
    "make_entry", "merge_snapshot", "read_entries", "require_group", "require_role",
    "signer_certificate", "verify_ledger",
]
