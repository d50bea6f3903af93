"""SSH public keys: parsed from their wire form, checked, and reduced to one canonical form.

Pure bytes in, keys out (`cryptography` objects, or the canonical blob): the same key encoded
twice (an RSA modulus with a leading zero byte) is the same canonical blob, and an ECDSA point
in compressed form is refused, as OpenSSH refuses it. `core.proof.sshsig` verifies with these.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class SignatureError(ValueError):
    """The signature does not prove anything; the message says why (one line)."""


_CURVES: dict[str, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    "nistp256": (ec.SECP256R1(), hashes.SHA256()),
    "nistp384": (ec.SECP384R1(), hashes.SHA384()),
    "nistp521": (ec.SECP521R1(), hashes.SHA512()),
}


def canonical_key(blob: bytes) -> bytes:
    """The one encoding of the key in `blob`: its parsed numbers and points written back as
    OpenSSH writes them (minimal mpints, uncompressed points). Raises SignatureError for a
    key that cannot be parsed, or an ECDSA point in compressed form."""
    public_key(blob)  # every check of the key itself
    ktype, off = read_string(blob, 0)
    if ktype == b"ssh-rsa":
        e, off = read_mpint(blob, off)
        n, _ = read_mpint(blob, off)
        return string(ktype) + mpint(e) + mpint(n)
    # ed25519 and ECDSA keys are fixed-size strings; public_key refused any other length
    # and any trailing byte, so the blob is already canonical but for the point's form
    if ktype.startswith((b"ecdsa-sha2-", b"sk-ecdsa-")):
        _, off = read_string(blob, off)
        q, _ = read_string(blob, off)
        if not q or q[0] != 0x04:
            raise SignatureError("ECDSA key in compressed (or unknown) point form is refused")
    return blob


def public_key(blob: bytes) -> Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The key inside an SSH public key blob (raises SignatureError when malformed)."""
    ktype_b, off = read_string(blob, 0)
    ktype = ktype_b.decode(errors="replace")
    try:
        if ktype in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
            pk, off = read_string(blob, off)
            if ktype.startswith("sk-"):
                _, off = read_string(blob, off)  # application
            end(blob, off)
            return Ed25519PublicKey.from_public_bytes(pk)
        if ktype.startswith("ecdsa-sha2-") or ktype == "sk-ecdsa-sha2-nistp256@openssh.com":
            curve_name, off = read_string(blob, off)
            q, off = read_string(blob, off)
            if ktype.startswith("sk-"):
                _, off = read_string(blob, off)
                want = "nistp256"
            else:
                want = ktype[11:]
            if curve_name.decode(errors="replace") != want or want not in _CURVES:
                raise SignatureError("ECDSA key names another curve")
            end(blob, off)
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[want][0], q)
        if ktype == "ssh-rsa":
            e, off = read_mpint(blob, off)
            n, off = read_mpint(blob, off)
            end(blob, off)
            if n.bit_length() < 2048:
                raise SignatureError("RSA keys under 2048 bits are refused")
            return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as e:
        if isinstance(e, SignatureError):
            raise
        raise SignatureError(f"malformed {ktype} key") from None
    raise SignatureError(f"unsupported key type {ktype!r}")


def sk_application(pub: bytes) -> bytes:
    ktype, off = read_string(pub, 0)
    _, off = read_string(pub, off)
    if ktype.startswith(b"sk-ecdsa"):
        _, off = read_string(pub, off)
    return read_string(pub, off)[0]


def end(blob: bytes, off: int) -> None:
    if off != len(blob):
        raise SignatureError("trailing bytes in the key")


def read_u32(b: bytes, off: int) -> tuple[int, int]:
    if off + 4 > len(b):
        raise SignatureError("truncated")
    return int.from_bytes(b[off : off + 4], "big"), off + 4


def read_string(b: bytes, off: int) -> tuple[bytes, int]:
    n, off = read_u32(b, off)
    if off + n > len(b):
        raise SignatureError("truncated")
    return b[off : off + n], off + n


def read_mpint(b: bytes, off: int) -> tuple[int, int]:
    raw, off = read_string(b, off)
    if raw and raw[0] & 0x80:
        raise SignatureError("negative integer")
    return int.from_bytes(raw, "big"), off


def string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def mpint(v: int) -> bytes:
    """An SSH mpint (RFC 4251): minimal big-endian, a zero byte only before a set top bit."""
    raw = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return string(b"\x00" + raw if raw and raw[0] & 0x80 else raw)
