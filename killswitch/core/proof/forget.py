"""What two operators sign to remove a node from the fleet registry (`forget --node`).

Pure: bytes in, a request out. The message binds the node, the reason and an expiry, so a
signature cannot be replayed onto another node or used after it lapsed.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from killswitch.core.proof.armproof import (
    ProofError,
    canonical,
    field_int,
    field_str,
    signed_fields,
    signed_node,
)

VERSION = "killswitch-forget-1"


@dataclass(frozen=True, slots=True)
class ForgetRequest:
    """The message both operators sign (canonical JSON, one byte string per request)."""

    node: str
    reason: str
    expires_ms: int  # Redis server time after which the request cannot be completed

    def encode(self) -> bytes:
        return canonical(
            {"v": VERSION, "node": self.node, "reason": self.reason, "expires_ms": self.expires_ms}
        )

    @classmethod
    def decode(cls, data: bytes) -> ForgetRequest:
        d = signed_fields(data, VERSION, "forget request")
        req = cls(signed_node(d), field_str(d, "reason"), field_int(d, "expires_ms"))
        if req.encode() != data:
            raise ProofError("the signed message is not in canonical form")
        return req


def key_fingerprint(signature: str) -> str:
    """The OpenSSH SHA256 fingerprint of the key inside a signature ("" if there is none)."""
    from killswitch.core.proof.sshsig import SignatureError, key_of  # noqa: PLC0415  loads cryptography

    try:
        blob = key_of(signature)
    except (SignatureError, ValueError, IndexError):
        return ""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"
