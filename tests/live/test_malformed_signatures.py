"""Every refusal of the pure OpenSSH signature verifier, fed one malformation at a time.

Keys and signatures are built here, field by field, as OpenSSH lays them out
(PROTOCOL.sshsig, RFC 4253/5656/8332), so each case breaks exactly one thing. Each refusal
names its reason; well-formed signatures of every key type are also checked against
`ssh-keygen -Y verify`, so the builder itself is known to be right.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from killswitch.core.proof.sshsig import (
    MAX_SIG_BYTES,
    Operators,
    SignatureError,
    SignersError,
    key_of,
    parse_allowed_signers,
    verify,
)

MSG = b'{"arm":"node smars epoch 7"}'
NS = b"killswitch"


def s(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return s(b"\x00" + raw if raw and raw[0] & 0x80 else raw)


def armor(blob: bytes) -> str:
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


_CURVE = {
    "nistp256": (ec.SECP256R1(), hashes.SHA256()),
    "nistp384": (ec.SECP384R1(), hashes.SHA384()),
    "nistp521": (ec.SECP521R1(), hashes.SHA512()),
}


@dataclass(frozen=True)
class Key:
    """One private key and how OpenSSH names and encodes it."""

    ktype: bytes
    pub: bytes
    sign_raw: Callable[[bytes], bytes]  # data -> the signature field inside the inner blob
    alg: bytes  # the algorithm the inner signature blob names
    app: bytes = b""  # security keys: the application the token signs for

    @property
    def line(self) -> str:
        return f"{self.ktype.decode()} {base64.b64encode(self.pub).decode()}"


def ed25519_key() -> Key:
    priv = Ed25519PrivateKey.generate()
    pk = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Key(b"ssh-ed25519", s(b"ssh-ed25519") + s(pk), priv.sign, b"ssh-ed25519")


def _ecdsa_raw(priv: ec.EllipticCurvePrivateKey, h: hashes.HashAlgorithm) -> Callable[..., bytes]:
    def sign(data: bytes) -> bytes:
        r, s_ = decode_dss_signature(priv.sign(data, ec.ECDSA(h)))
        return mpint(r) + mpint(s_)

    return sign


def ecdsa_key(curve: str) -> Key:
    priv = ec.generate_private_key(_CURVE[curve][0])
    q = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ktype = f"ecdsa-sha2-{curve}".encode()
    return Key(ktype, s(ktype) + s(curve.encode()) + s(q), _ecdsa_raw(priv, _CURVE[curve][1]),
               ktype)  # fmt: skip


def rsa_key(bits: int = 2048, alg: bytes = b"rsa-sha2-512") -> Key:
    priv = rsa.generate_private_key(65537, bits)
    nums = priv.public_key().public_numbers()
    h = hashes.SHA512() if alg == b"rsa-sha2-512" else hashes.SHA256()

    def sign(data: bytes) -> bytes:
        return priv.sign(data, padding.PKCS1v15(), h)

    return Key(b"ssh-rsa", s(b"ssh-rsa") + mpint(nums.e) + mpint(nums.n), sign, alg)


def sk_ed25519_key() -> Key:
    priv = Ed25519PrivateKey.generate()
    pk = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ktype = b"sk-ssh-ed25519@openssh.com"
    return Key(ktype, s(ktype) + s(pk) + s(b"ssh:"), priv.sign, ktype, b"ssh:")


def sk_ecdsa_key() -> Key:
    priv = ec.generate_private_key(ec.SECP256R1())
    q = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ktype = b"sk-ecdsa-sha2-nistp256@openssh.com"
    pub = s(ktype) + s(b"nistp256") + s(q) + s(b"ssh:")
    return Key(ktype, pub, _ecdsa_raw(priv, hashes.SHA256()), ktype, b"ssh:")


@dataclass(frozen=True)
class Sig:
    """The fields of one SSHSIG blob; `build()` lays them out, each overridable."""

    key: Key
    message: bytes = MSG
    ns: bytes = NS
    halg: bytes = b"sha512"
    version: int = 1
    reserved: bytes = b""
    alg: bytes | None = None  # the inner blob's algorithm (default: the key's)
    flags: int = 0x01  # security keys: user present
    sk_tail: bytes | None = None  # security keys: what follows the signature (flags, counter)
    inner_extra: bytes = b""  # bytes after the inner blob's last field
    raw_extra: bytes = b""  # bytes after the signature inside its own field (ECDSA r, s)
    raw: bytes | None = None  # the signature field itself, replacing a real one
    outer_extra: bytes = b""  # bytes after the SSHSIG blob's last field

    def signed(self) -> bytes:
        digest = hashlib.new(self.halg.decode(), self.message).digest()
        return b"SSHSIG" + s(self.ns) + s(self.reserved) + s(self.halg) + s(digest)

    def build(self) -> bytes:
        k, signed = self.key, self.signed()
        counter = (7).to_bytes(4, "big")
        tail = b""
        if k.app:
            data = hashlib.sha256(k.app).digest() + bytes([self.flags]) + counter
            raw = k.sign_raw(data + hashlib.sha256(signed).digest())
            tail = bytes([self.flags]) + counter if self.sk_tail is None else self.sk_tail
        else:
            raw = k.sign_raw(signed)
        raw = self.raw if self.raw is not None else raw + self.raw_extra
        inner = s(self.alg or k.alg) + s(raw) + tail + self.inner_extra
        return (
            b"SSHSIG" + self.version.to_bytes(4, "big") + s(k.pub) + s(self.ns)
            + s(self.reserved) + s(self.halg) + s(inner) + self.outer_extra
        )  # fmt: skip

    def armored(self) -> str:
        return armor(self.build())


KEYS: dict[str, Callable[[], Key]] = {
    "ed25519": ed25519_key,
    "ecdsa256": lambda: ecdsa_key("nistp256"),
    "ecdsa384": lambda: ecdsa_key("nistp384"),
    "ecdsa521": lambda: ecdsa_key("nistp521"),
    "rsa-sha2-512": rsa_key,
    "rsa-sha2-256": lambda: rsa_key(alg=b"rsa-sha2-256"),
    "sk-ed25519": sk_ed25519_key,
    "sk-ecdsa": sk_ecdsa_key,
}


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {name: make() for name, make in KEYS.items()}


def operators(*ks: Key) -> Operators:
    """Through the real allowed-signers parser, as a sidecar loads them."""
    text = "".join(f'op{i} namespaces="killswitch" {k.line}\n' for i, k in enumerate(ks))
    return parse_allowed_signers(text)


def openssh_accepts(tmp: Path, k: Key, message: bytes, signature: str) -> bool:
    (tmp / "signers").write_text(f'op0 namespaces="killswitch" {k.line}\n')
    (tmp / "msg.sig").write_text(signature)
    res = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(tmp / "signers"), "-I", "op0",
         "-n", "killswitch", "-s", str(tmp / "msg.sig")],
        input=message, capture_output=True, check=False,
    )  # fmt: skip
    return res.returncode == 0


class TestWellFormed:
    """The builder's signatures are real: OpenSSH and this verifier both accept them."""

    @pytest.mark.parametrize("halg", [b"sha256", b"sha512"])
    @pytest.mark.parametrize("name", list(KEYS))
    def test_every_key_type_and_hash_verifies_like_openssh(
        self, keys: dict[str, Key], name: str, halg: bytes, tmp_path: Path
    ) -> None:
        """Each key type, with either hash, names its principal and OpenSSH agrees."""
        sig = Sig(keys[name], halg=halg).armored()
        assert verify(operators(keys[name]), MSG, sig) == "op0"
        assert openssh_accepts(tmp_path, keys[name], MSG, sig)

    def test_key_of_names_the_signing_key(self, keys: dict[str, Key]) -> None:
        """key_of reads the public key out of a signature without checking anything else."""
        sig = Sig(keys["ed25519"], ns=b"git").armored()
        assert key_of(sig) == keys["ed25519"].pub
        assert key_of(sig.encode()) == keys["ed25519"].pub

    def test_operators_count_keys_and_list_principals_once(self, keys: dict[str, Key]) -> None:
        """One principal may own several keys: counted per key, listed once, sorted."""
        a, b, c = keys["ed25519"], keys["ecdsa256"], keys["rsa-sha2-512"]
        ops = parse_allowed_signers(
            f"zoe {a.line}\n"
            f'alice  namespaces="git, killswitch"  {b.line}\n'  # extra spaces, quoted space
            f"alice {c.line}\n"
        )
        assert len(ops) == 3
        assert ops.principals == ("alice", "zoe")


def _version(k: Key) -> Sig:
    return Sig(k, version=2)


# (case id, key, how the signature is broken, the reason it is refused)
VERIFY_CASES: list[tuple[str, str, Callable[[Key], Sig], str]] = [
    ("version-2", "ed25519", _version, "unsupported SSHSIG version 2"),
    ("trailing-after-signature", "ed25519", lambda k: Sig(k, outer_extra=b"\x00"),
     "trailing bytes after the signature"),
    ("other-namespace", "ed25519", lambda k: Sig(k, ns=b"git"),
     "signed for namespace 'git', not 'killswitch'"),
    ("sha1-hash", "ed25519", lambda k: Sig(k, halg=b"sha1"), "unsupported hash 'sha1'"),
    ("ed25519-alg-mismatch", "ed25519", lambda k: Sig(k, alg=b"ssh-rsa"),
     "signature algorithm b'ssh-rsa' does not match the key"),
    ("ed25519-inner-trailing", "ed25519", lambda k: Sig(k, inner_extra=b"\x00"),
     "trailing bytes in the signature"),
    ("ed25519-short-signature", "ed25519", lambda k: Sig(k, raw=b"\x01" * 63),
     "the signature does not match the message"),
    ("ecdsa-alg-mismatch", "ecdsa256", lambda k: Sig(k, alg=b"ecdsa-sha2-nistp384"),
     "signature algorithm b'ecdsa-sha2-nistp384' does not match the key"),
    ("ecdsa-inner-trailing", "ecdsa384", lambda k: Sig(k, inner_extra=b"\x00"),
     "trailing bytes in the signature"),
    ("ecdsa-rs-trailing", "ecdsa521", lambda k: Sig(k, raw_extra=b"\x00"),
     "trailing bytes in the ECDSA signature"),
    ("ecdsa-negative-r", "ecdsa256", lambda k: Sig(k, raw=s(b"\x80" + b"\x01" * 31) + mpint(1)),
     "negative integer"),
    ("ecdsa-truncated-rs", "ecdsa256", lambda k: Sig(k, raw=mpint(5)), "truncated"),
    ("ecdsa-other-message", "ecdsa256", lambda k: Sig(k, message=b"other"),
     "the signature does not match the message"),
    ("rsa-sha1", "rsa-sha2-512", lambda k: Sig(k, alg=b"ssh-rsa"),
     "RSA signature algorithm b'ssh-rsa' refused (SHA-1)"),
    ("rsa-alg-other-hash", "rsa-sha2-512", lambda k: Sig(k, alg=b"rsa-sha2-256"),
     "the signature does not match the message"),
    ("rsa-inner-trailing", "rsa-sha2-256", lambda k: Sig(k, inner_extra=b"\x00"),
     "trailing bytes in the signature"),
    ("sk-alg-mismatch", "sk-ed25519", lambda k: Sig(k, alg=b"ssh-ed25519"),
     "signature algorithm b'ssh-ed25519' does not match the key"),
    ("sk-no-counter", "sk-ed25519", lambda k: Sig(k, sk_tail=b"\x01\x00"),
     "security-key signature without flags and counter"),
    ("sk-trailing", "sk-ecdsa", lambda k: Sig(k, inner_extra=b"\x00"),
     "trailing bytes in the security-key signature"),
    ("sk-no-user-presence", "sk-ecdsa", lambda k: Sig(k, flags=0x04),
     "security-key signature made without user presence"),
    ("sk-ecdsa-other-message", "sk-ecdsa", lambda k: Sig(k, message=b"other"),
     "the signature does not match the message"),
    ("sk-ed25519-other-message", "sk-ed25519", lambda k: Sig(k, message=b"other"),
     "the signature does not match the message"),
]  # fmt: skip


# `ssh-keygen -Y verify` (OpenSSH 9.2) accepts a security-key signature made without a touch;
# this verifier refuses it (stricter is allowed: it must only never accept more than OpenSSH).
STRICTER_THAN_OPENSSH = {"sk-no-user-presence"}


class TestMalformedSignatures:
    """One broken field at a time; the reason names what is wrong."""

    @pytest.mark.parametrize(
        ("name", "broken", "reason"),
        [c[1:] for c in VERIFY_CASES],
        ids=[c[0] for c in VERIFY_CASES],
    )
    def test_refused_with_its_reason_and_by_openssh(
        self,
        keys: dict[str, Key],
        name: str,
        broken: Callable[[Key], Sig],
        reason: str,
        tmp_path: Path,
        request: pytest.FixtureRequest,
    ) -> None:
        """The verifier refuses the broken signature with this reason; OpenSSH refuses it too."""
        k = keys[name]
        sig = broken(k).armored()
        with pytest.raises(SignatureError) as refused:
            verify(operators(k), MSG, sig)
        assert str(refused.value) == reason
        if request.node.callspec.id not in STRICTER_THAN_OPENSSH:
            assert not openssh_accepts(tmp_path, k, MSG, sig)

    @pytest.mark.parametrize(
        ("signature", "reason"),
        [
            ("", "not an armored SSH signature"),
            ("-----BEGIN SSH SIGNATURE-----\nAAAA\n", "not an armored SSH signature"),
            ("x" * (MAX_SIG_BYTES * 2 + 1), "signature too long"),
            (armor(b""), "not an SSH signature (no SSHSIG preamble)"),
            (armor(b"NOTSIG" + bytes(20)), "not an SSH signature (no SSHSIG preamble)"),
            (armor(b"SSHSIG" + bytes(3)), "not an SSH signature (no SSHSIG preamble)"),
            (armor(b"SSHSIG\x00\x00\x00\x01\x00\x00\x01\x00"), "truncated"),
            ("-----BEGIN SSH SIGNATURE-----\n%%%%\n-----END SSH SIGNATURE-----",
             "signature is not valid base64"),
        ],
        ids=["empty", "no-end-line", "too-long", "empty-body", "other-magic", "short",
             "truncated-key", "bad-base64"],
    )  # fmt: skip
    def test_not_a_signature_at_all(
        self, keys: dict[str, Key], signature: str, reason: str
    ) -> None:
        """Text that is no SSH signature is refused before any key is looked at."""
        with pytest.raises(SignatureError) as refused:
            verify(operators(keys["ed25519"]), MSG, signature)
        assert str(refused.value) == reason

    def test_key_not_in_the_operators_file(self, keys: dict[str, Key]) -> None:
        """A good signature by a key nobody listed proves nothing."""
        sig = Sig(keys["ecdsa256"]).armored()
        with pytest.raises(SignatureError, match=r"^signed by a key that is not in the operators"):
            verify(operators(keys["ed25519"]), MSG, sig)

    def test_key_of_refuses_what_is_no_signature(self) -> None:
        """key_of says why when the text is no SSHSIG blob."""
        with pytest.raises(SignatureError, match=r"no SSHSIG preamble"):
            key_of(armor(b"NOTSIG" + bytes(20)))


def _key_line(ktype: str, blob: bytes) -> str:
    return f"alice {ktype} {base64.b64encode(blob).decode()}\n"


def _ecdsa_pub(curve_named: bytes, ktype: bytes = b"ecdsa-sha2-nistp256") -> bytes:
    q = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return s(ktype) + s(curve_named) + s(q)


def _small_rsa() -> bytes:
    nums = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    return s(b"ssh-rsa") + mpint(nums.e) + mpint(nums.n)


SIGNER_CASES: list[tuple[str, Callable[[Key], str], str]] = [
    ("rsa-1024", lambda k: _key_line("ssh-rsa", _small_rsa()),
     "line 1: bad key: RSA keys under 2048 bits are refused"),
    ("rsa-negative-exponent",
     lambda k: _key_line("ssh-rsa", s(b"ssh-rsa") + s(b"\x80") + s(b"\x01")),
     "line 1: bad key: negative integer"),
    ("ecdsa-other-curve", lambda k: _key_line("ecdsa-sha2-nistp256", _ecdsa_pub(b"nistp384")),
     "line 1: bad key: ECDSA key names another curve"),
    ("sk-ecdsa-other-curve", lambda k: _key_line(
        "sk-ecdsa-sha2-nistp256@openssh.com",
        _ecdsa_pub(b"nistp384", b"sk-ecdsa-sha2-nistp256@openssh.com") + s(b"ssh:")),
     "line 1: bad key: ECDSA key names another curve"),
    ("ecdsa-point-off-curve", lambda k: _key_line(
        "ecdsa-sha2-nistp256", s(b"ecdsa-sha2-nistp256") + s(b"nistp256") + s(b"\x04" + bytes(64))),
     "line 1: bad key: malformed ecdsa-sha2-nistp256 key"),
    ("ed25519-short-key", lambda k: _key_line("ssh-ed25519", s(b"ssh-ed25519") + s(bytes(31))),
     "line 1: bad key: malformed ssh-ed25519 key"),
    ("key-trailing-bytes", lambda k: _key_line("ssh-ed25519", k.pub + b"\x00"),
     "line 1: bad key: trailing bytes in the key"),
    ("key-truncated", lambda k: _key_line("ssh-ed25519", k.pub[:-1]), "line 1: bad key: truncated"),
    ("type-differs-from-line", lambda k: _key_line("ssh-rsa", k.pub),
     "line 1: bad key: the key's type does not match the line"),
    ("unsupported-type-in-blob", lambda k: _key_line("ssh-ed25519", s(b"ssh-dss") + s(b"x")),
     "line 1: bad key: unsupported key type 'ssh-dss'"),
    ("options-but-no-key", lambda k: 'alice namespaces="killswitch" ssh-ed25519\n',
     "line 1: expected: <principal> [options] <key-type> <base64-key>"),
    ("unterminated-quote", lambda k: f'alice namespaces="killswitch {k.line}\n',
     "line 1: unterminated quote"),
]  # fmt: skip


class TestMalformedSignerLines:
    """Allowed-signers lines whose key is unusable are refused at load, naming the line."""

    @pytest.mark.parametrize(
        ("line", "reason"), [c[1:] for c in SIGNER_CASES], ids=[c[0] for c in SIGNER_CASES]
    )
    def test_refused_with_its_reason(
        self, keys: dict[str, Key], line: Callable[[Key], str], reason: str
    ) -> None:
        """A key that is too weak, mislabelled, malformed or cut short fails the whole file."""
        with pytest.raises(SignersError) as refused:
            parse_allowed_signers(line(keys["ed25519"]))
        assert str(refused.value) == reason
