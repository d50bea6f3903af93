"""Two operators are two keys: keys are compared as keys, never as encoded bytes.

Real ssh-keygen keys and signatures, re-encoded by hand the ways one person could list one key
twice: an RSA modulus with a leading zero byte, an ECDSA point in compressed form. Each is
refused in the operators file (as OpenSSH refuses the compressed point), and a signature
carrying such an encoding of a listed key is that key: it counts once.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from killswitch.core.proof.armproof import ONE_OPERATOR, ArmRequest, Proof, verify_proof
from killswitch.core.proof.sshsig import (
    SignersError,
    canonical_key,
    parse_allowed_signers,
    verify,
    verify_signer,
)
from killswitch.sim.operators import make_key, signer_line

MSG = ArmRequest("smars", 0, 0, 1, ("or-01",), "open", 2**50, boots=(("or-01", "b0" * 8),)).encode()


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def _read(b: bytes, off: int) -> tuple[bytes, int]:
    n = int.from_bytes(b[off : off + 4], "big")
    return b[off + 4 : off + 4 + n], off + 4 + n


def pub_blob(key: Path) -> tuple[str, bytes]:
    kind, b64 = Path(f"{key}.pub").read_text().split()[:2]
    return kind, base64.b64decode(b64)


def padded_rsa(blob: bytes) -> bytes:
    """The same RSA key with one more leading zero byte on its modulus."""
    kind, off = _read(blob, 0)
    e, off = _read(blob, off)
    n, _ = _read(blob, off)
    return _s(kind) + _s(e) + _s(b"\x00" + n)


def compressed_ecdsa(blob: bytes) -> bytes:
    kind, off = _read(blob, 0)
    curve, off = _read(blob, off)
    q, _ = _read(blob, off)
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), q)
    return (
        _s(kind) + _s(curve) + _s(point.public_bytes(Encoding.X962, PublicFormat.CompressedPoint))
    )


def line(principal: str, kind: str, blob: bytes) -> str:
    return f'{principal} namespaces="killswitch" {kind} {base64.b64encode(blob).decode()}\n'


def sign(key: Path, message: bytes) -> str:
    return subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", "killswitch", "-f", str(key)],
        input=message, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip


def with_pub(signature: str, pub: bytes) -> str:
    """The same SSHSIG signature with its embedded public key replaced by `pub`."""
    body = "".join(signature.strip().splitlines()[1:-1])
    blob = base64.b64decode(body)
    _, off = _read(blob, 10)
    out = base64.b64encode(blob[:10] + _s(pub) + blob[off:]).decode()
    return "-----BEGIN SSH SIGNATURE-----\n" + out + "\n-----END SSH SIGNATURE-----\n"


@pytest.fixture(scope="module")
def rsa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("rsa") / "k", "k", "rsa")


@pytest.fixture(scope="module")
def ecdsa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("ec") / "k", "k", "ecdsa")


class TestOneKeyOnePerson:
    """Re-encodings of one key are one key."""

    def test_rsa_key_with_a_leading_zero_under_a_second_name_is_refused(self, rsa: Path) -> None:
        """bob's RSA key, and the same key with a padded modulus as mallory: refused."""
        kind, blob = pub_blob(rsa)
        assert canonical_key(padded_rsa(blob)) == blob  # the same numbers, the same key
        text = line("bob", kind, blob) + line("mallory", kind, padded_rsa(blob))
        with pytest.raises(SignersError, match=r"line 2: .*canonical"):
            parse_allowed_signers(text)

    def test_non_canonical_key_alone_is_refused(self, rsa: Path) -> None:
        """A padded modulus is refused even when nobody else lists the key."""
        kind, blob = pub_blob(rsa)
        with pytest.raises(SignersError, match=r"line 1: .*canonical"):
            parse_allowed_signers(line("bob", kind, padded_rsa(blob)))

    def test_compressed_ecdsa_point_is_refused_as_openssh_does(
        self, ecdsa: Path, tmp_path: Path
    ) -> None:
        """An ECDSA key in compressed form: refused here, and `ssh-keygen -Y verify` refuses
        the same file."""
        kind, blob = pub_blob(ecdsa)
        text = line("alice", kind, compressed_ecdsa(blob))
        with pytest.raises(SignersError, match="compressed"):
            parse_allowed_signers(text)
        (tmp_path / "signers").write_text(text)
        (tmp_path / "m.sig").write_text(sign(ecdsa, MSG))
        res = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "signers"), "-I", "alice",
             "-n", "killswitch", "-s", str(tmp_path / "m.sig")],
            input=MSG, capture_output=True, check=False,
        )  # fmt: skip
        assert res.returncode != 0

    def test_signature_carrying_a_padded_key_is_the_same_key_and_counts_once(
        self, rsa: Path
    ) -> None:
        """bob's signature with his key re-encoded verifies as bob's key; two such signatures
        are one operator."""
        kind, blob = pub_blob(rsa)
        ops = parse_allowed_signers(line("bob", kind, blob))
        sig = sign(rsa, MSG)
        other = with_pub(sig, padded_rsa(blob))
        assert verify_signer(ops, MSG, other) == ("bob", blob)
        verdict = verify_proof(ops, Proof(MSG, (sig, other)).to_text())
        assert verdict.refusal == ONE_OPERATOR

    def test_one_principal_with_two_keys_is_one_operator(self, tmp_path: Path) -> None:
        """alice listed with two keys signs with both: one operator, not two."""
        a1, a2 = make_key(tmp_path / "a1", "a1"), make_key(tmp_path / "a2", "a2")
        ops = parse_allowed_signers(signer_line("alice", a1) + signer_line("alice", a2))
        assert verify(ops, MSG, sign(a2, MSG)) == "alice"
        verdict = verify_proof(ops, Proof(MSG, (sign(a1, MSG), sign(a2, MSG))).to_text())
        assert (verdict.refusal, verdict.principals) == (ONE_OPERATOR, ("alice",))
