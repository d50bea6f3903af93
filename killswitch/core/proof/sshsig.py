"""OpenSSH signatures (PROTOCOL.sshsig) and allowed-signers files, verified in pure Python.

Bytes in, a principal or a refusal out: no file, no subprocess, no clock. Signing stays with
OpenSSH (`ssh-keygen -Y sign`), so agents and hardware keys work; this module only checks.
It must never accept a signature `ssh-keygen -Y verify` would reject for the same file.

Allowed-signers rules (documented in the README): a line whose `namespaces=` does not list
`killswitch` is ignored (the same file may serve git); `cert-authority`, `valid-after`,
`valid-before` and wildcard principals are refused with the line named (certificates and
validity windows are not supported, and silently dropping a bound would widen trust); one
key may belong to one principal only (else one person could count as two operators).

Keys are compared as keys, not as bytes: every key is reduced to its canonical encoding (the
parsed numbers and points written back the one way OpenSSH writes them), so an RSA modulus
with a leading zero byte is the same key as without it. A line whose key is not in canonical
form is refused, and so is an ECDSA point in compressed form (OpenSSH rejects both).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from killswitch.core.proof.sshkeys import _CURVES, SignatureError, canonical_key
from killswitch.core.proof.sshkeys import public_key as _public_key
from killswitch.core.proof.sshkeys import read_mpint as _read_mpint
from killswitch.core.proof.sshkeys import read_string as _read_string
from killswitch.core.proof.sshkeys import read_u32 as _read_u32
from killswitch.core.proof.sshkeys import sk_application as _sk_application
from killswitch.core.proof.sshkeys import string as _string

__all__ = [
    "NAMESPACE",
    "Operators",
    "SignatureError",
    "SignersError",
    "canonical_key",
    "key_of",
    "parse_allowed_signers",
    "verify",
    "verify_signer",
]

NAMESPACE = "killswitch"
MAGIC = b"SSHSIG"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
MAX_SIG_BYTES = 16384  # an RSA-16384 signature is ~2.1 kB: anything far larger is junk

KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_SK_USER_PRESENT = 0x01
_PRINCIPAL = re.compile(r"[^\s,*?!]+")


class SignersError(ValueError):
    """The allowed-signers text cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Operators:
    """The allowed signers for the `killswitch` namespace: canonical key blob -> principal."""

    keys: Mapping[bytes, str]

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.keys.values())))

    def __len__(self) -> int:
        return len(self.keys)


# -- allowed-signers files -------------------------------------------------------------------


def parse_allowed_signers(text: str, namespace: str = NAMESPACE) -> Operators:
    """Parse an OpenSSH allowed-signers file (see the module docstring for the rules)."""
    keys: dict[bytes, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            principals, options, blob = _signer_line(line)
        except SignersError as e:
            raise SignersError(f"line {n}: {e}") from None
        nss = options.get("namespaces")
        if nss is not None and namespace not in [x.strip() for x in nss.split(",")]:
            continue  # a key for another namespace (e.g. git commits): not an operator here
        for bad in ("cert-authority", "valid-after", "valid-before"):
            if bad in options:
                raise SignersError(f"line {n}: option {bad} is not supported; list plain keys")
        other = set(options) - {"namespaces"}
        if other:
            raise SignersError(f"line {n}: unknown option(s) {', '.join(sorted(other))}")
        principal = principals[0]
        if len(principals) > 1:
            raise SignersError(f"line {n}: one principal per key line (got {len(principals)})")
        if blob in keys and keys[blob] != principal:
            raise SignersError(
                f"line {n}: this key already belongs to {keys[blob]!r}; one key, one operator"
            )
        keys[blob] = principal
    return Operators(keys)


def _signer_line(line: str) -> tuple[list[str], dict[str, str], bytes]:
    fields = list(_split_fields(line))
    if len(fields) < 3:
        raise SignersError("expected: <principal> [options] <key-type> <base64-key>")
    principals = fields[0].split(",")
    for p in principals:
        if not _PRINCIPAL.fullmatch(p):
            raise SignersError(f"principal {p!r} is not supported (no wildcards or negation)")
    if fields[1] in KEY_TYPES or fields[1].startswith(("ssh-", "ecdsa-", "sk-")):
        opt_text, ktype, b64 = "", fields[1], fields[2]
    else:
        if len(fields) < 4:
            raise SignersError("expected: <principal> [options] <key-type> <base64-key>")
        opt_text, ktype, b64 = fields[1], fields[2], fields[3]
    if ktype not in KEY_TYPES:
        raise SignersError(f"key type {ktype!r} is not supported")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignersError("the key is not valid base64") from None
    try:
        if canonical_key(blob) != blob:
            raise SignatureError("not in canonical form (a leading zero byte?): re-export it")
        if _read_string(blob, 0)[0] != ktype.encode():
            raise SignatureError("the key's type does not match the line")
    except SignatureError as e:
        raise SignersError(f"bad key: {e}") from None
    return principals, _options(opt_text), blob


def _split_fields(line: str) -> Iterator[str]:
    """Whitespace-separated fields; double quotes protect spaces (namespaces="a b")."""
    buf, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch.isspace() and not quoted:
            if buf:
                yield "".join(buf)
                buf = []
        else:
            buf.append(ch)
    if quoted:
        raise SignersError("unterminated quote")
    if buf:
        yield "".join(buf)


def _options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    for part in re.findall(r'(?:[^,"]|"[^"]*")+', text):
        name, eq, value = part.partition("=")
        out[name.strip().lower()] = value.strip().strip('"') if eq else ""
    return out


# -- signatures ------------------------------------------------------------------------------


def verify(
    operators: Operators, message: bytes, signature: str | bytes, namespace: str = NAMESPACE
) -> str:
    """The principal whose key made this OpenSSH signature of `message` in `namespace`.

    Raises SignatureError for anything else: not a signature, another namespace, a key not
    in `operators`, a signature that does not match the message.
    """
    return verify_signer(operators, message, signature, namespace)[0]


def verify_signer(
    operators: Operators, message: bytes, signature: str | bytes, namespace: str = NAMESPACE
) -> tuple[str, bytes]:
    """Like `verify`: (principal, the canonical blob of the key that signed). Two signatures
    are two operators only when both the principals and the keys differ."""
    blob = _dearmor(signature)
    if len(blob) < 10 or blob[:6] != MAGIC:
        raise SignatureError("not an SSH signature (no SSHSIG preamble)")
    off = 6
    version, off = _read_u32(blob, off)
    if version != 1:
        raise SignatureError(f"unsupported SSHSIG version {version}")
    pub, off = _read_string(blob, off)
    ns, off = _read_string(blob, off)
    reserved, off = _read_string(blob, off)
    halg, off = _read_string(blob, off)
    sig, off = _read_string(blob, off)
    if off != len(blob):
        raise SignatureError("trailing bytes after the signature")
    if ns != namespace.encode():
        raise SignatureError(
            f"signed for namespace {ns.decode(errors='replace')!r}, not {namespace!r}"
        )
    if halg == b"sha256":
        digest = hashlib.sha256(message).digest()
    elif halg == b"sha512":
        digest = hashlib.sha512(message).digest()
    else:
        raise SignatureError(f"unsupported hash {halg.decode(errors='replace')!r}")
    canon = canonical_key(pub)
    principal = operators.keys.get(canon)
    if principal is None:
        raise SignatureError("signed by a key that is not in the operators file")
    signed = MAGIC + _string(ns) + _string(reserved) + _string(halg) + _string(digest)
    _check(pub, signed, sig)
    return principal, canon


def key_of(signature: str | bytes) -> bytes:
    """The public key blob inside a signature (no check of anything else)."""
    blob = _dearmor(signature)
    if blob[:6] != MAGIC:
        raise SignatureError("not an SSH signature (no SSHSIG preamble)")
    return _read_string(blob, 10)[0]


def _dearmor(signature: str | bytes) -> bytes:
    text = signature.decode("ascii", "replace") if isinstance(signature, bytes) else signature
    if len(text) > MAX_SIG_BYTES * 2:
        raise SignatureError("signature too long")
    text = text.strip()
    if not (text.startswith(ARMOR_BEGIN) and text.endswith(ARMOR_END)):
        raise SignatureError("not an armored SSH signature")
    body = "".join(text[len(ARMOR_BEGIN) : -len(ARMOR_END)].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None


def _check(pub: bytes, signed: bytes, sig: bytes) -> None:
    """Verify the inner SSH signature blob `sig` by key `pub` over `signed`."""
    key = _public_key(pub)
    ktype = _read_string(pub, 0)[0].decode()
    alg, off = _read_string(sig, 0)
    raw, off = _read_string(sig, off)
    try:
        if ktype == "ssh-ed25519":
            _expect(alg, b"ssh-ed25519", off, sig)
            assert isinstance(key, Ed25519PublicKey)
            key.verify(raw, signed)
        elif ktype.startswith("ecdsa-sha2-"):
            _expect(alg, ktype.encode(), off, sig)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(_ecdsa_der(raw), signed, ec.ECDSA(_CURVES[ktype[11:]][1]))
        elif ktype == "ssh-rsa":
            if alg not in (b"rsa-sha2-256", b"rsa-sha2-512"):
                raise SignatureError(f"RSA signature algorithm {alg!r} refused (SHA-1)")
            _expect(alg, alg, off, sig)
            assert isinstance(key, rsa.RSAPublicKey)
            h: hashes.HashAlgorithm = hashes.SHA256() if alg == b"rsa-sha2-256" else hashes.SHA512()
            key.verify(raw, signed, padding.PKCS1v15(), h)
        else:  # security keys: the token signs sha256(application) | flags | counter | sha256(data)
            _expect_prefix(alg, ktype.encode())
            if len(sig) < off + 5:
                raise SignatureError("security-key signature without flags and counter")
            flags, counter = sig[off], sig[off + 1 : off + 5]
            if off + 5 != len(sig):
                raise SignatureError("trailing bytes in the security-key signature")
            if not flags & _SK_USER_PRESENT:
                raise SignatureError("security-key signature made without user presence")
            app = _sk_application(pub)
            data = (
                hashlib.sha256(app).digest()
                + bytes([flags])
                + counter
                + hashlib.sha256(signed).digest()
            )
            if isinstance(key, Ed25519PublicKey):
                key.verify(raw, data)
            else:
                assert isinstance(key, ec.EllipticCurvePublicKey)
                key.verify(_ecdsa_der(raw), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("the signature does not match the message") from None


def _expect(alg: bytes, want: bytes, off: int, sig: bytes) -> None:
    if alg != want:
        raise SignatureError(f"signature algorithm {alg!r} does not match the key")
    if off != len(sig):
        raise SignatureError("trailing bytes in the signature")


def _expect_prefix(alg: bytes, want: bytes) -> None:
    if alg != want:
        raise SignatureError(f"signature algorithm {alg!r} does not match the key")


def _ecdsa_der(raw: bytes) -> bytes:
    r, off = _read_mpint(raw, 0)
    s, off = _read_mpint(raw, off)
    if off != len(raw):
        raise SignatureError("trailing bytes in the ECDSA signature")
    return encode_dss_signature(r, s)
