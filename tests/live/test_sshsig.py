"""The pure OpenSSH signature verifier against the real `ssh-keygen -Y sign` and `-Y verify`.

Keys are made by ssh-keygen in a temp directory; every verdict of ours is compared with what
OpenSSH itself says about the same signature, message and allowed-signers file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from killswitch.core.proof.armproof import (
    BAD_PROOF,
    BAD_SIGNATURE,
    NO_OPERATORS,
    ONE_OPERATOR,
    UNLISTED,
    UNSIGNED,
    WRONG_EPOCH,
    WRONG_NODE,
    ArmRequest,
    Proof,
    ProofError,
    gate_refusal,
    verify_proof,
)
from killswitch.core.proof.sshsig import (
    Operators,
    SignatureError,
    SignersError,
    parse_allowed_signers,
    verify,
)
from killswitch.sim.operators import make_key, signer_line

KEY_TYPES = {
    "ed25519": ("ed25519", None),
    "ecdsa256": ("ecdsa", "256"),
    "ecdsa384": ("ecdsa", "384"),
    "ecdsa521": ("ecdsa", "521"),
    "rsa": ("rsa", "3072"),
}
MSG = b'{"arm":"node smars epoch 7"}'


def _keygen(path: Path, kind: str, bits: str | None) -> Path:
    args = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)]
    if bits:
        args[4:4] = ["-b", bits]
    subprocess.run(args, check=True, capture_output=True)
    return path


def ssh_sign(key: Path, message: bytes, namespace: str = "killswitch") -> str:
    res = subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key)],
        input=message, capture_output=True, check=True,
    )  # fmt: skip
    return res.stdout.decode()


def ssh_verify(signers: Path, principal: str, message: bytes, sig: str, tmp: Path) -> bool:
    sig_path = tmp / "check.sig"
    sig_path.write_text(sig)
    res = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", principal, "-n", "killswitch",
         "-s", str(sig_path)],
        input=message, capture_output=True, check=False,
    )  # fmt: skip
    return res.returncode == 0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """One key of every supported type, and an allowed-signers file naming each by its type."""
    d = tmp_path_factory.mktemp("keys")
    made = {name: _keygen(d / name, *spec) for name, spec in KEY_TYPES.items()}
    made["outsider"] = _keygen(d / "outsider", "ed25519", None)
    signers = d / "signers"
    signers.write_text("".join(signer_line(n, k) for n, k in made.items() if n != "outsider"))
    yield signers, made


class TestAgainstOpenSSH:
    """Signatures made by `ssh-keygen -Y sign` verify here exactly when OpenSSH says they do."""

    @pytest.mark.parametrize("kind", sorted(KEY_TYPES))
    def test_real_signature_verifies_and_names_the_principal(
        self, keys: tuple[Path, dict[str, Path]], kind: str, tmp_path: Path
    ) -> None:
        """Each key type's real signature gives its principal, and ssh-keygen agrees."""
        signers, made = keys
        sig = ssh_sign(made[kind], MSG)
        ops = parse_allowed_signers(signers.read_text())
        assert verify(ops, MSG, sig) == kind
        assert ssh_verify(signers, kind, MSG, sig, tmp_path)

    @pytest.mark.parametrize("kind", sorted(KEY_TYPES))
    def test_tampered_message_is_refused_by_both(
        self, keys: tuple[Path, dict[str, Path]], kind: str, tmp_path: Path
    ) -> None:
        """One changed byte of the message: refused here and by `ssh-keygen -Y verify`."""
        signers, made = keys
        sig = ssh_sign(made[kind], MSG)
        other = MSG.replace(b"7", b"8")
        with pytest.raises(SignatureError, match="does not match"):
            verify(parse_allowed_signers(signers.read_text()), other, sig)
        assert not ssh_verify(signers, kind, other, sig, tmp_path)

    def test_wrong_namespace_is_refused_by_both(
        self, keys: tuple[Path, dict[str, Path]], tmp_path: Path
    ) -> None:
        """A signature for the `git` namespace never counts as a killswitch signature."""
        signers, made = keys
        sig = ssh_sign(made["ed25519"], MSG, namespace="git")
        with pytest.raises(SignatureError, match="namespace"):
            verify(parse_allowed_signers(signers.read_text()), MSG, sig)
        assert not ssh_verify(signers, "ed25519", MSG, sig, tmp_path)

    def test_key_not_in_the_file_is_refused_by_both(
        self, keys: tuple[Path, dict[str, Path]], tmp_path: Path
    ) -> None:
        """A valid signature by a key outside the operators file proves nothing."""
        signers, made = keys
        sig = ssh_sign(made["outsider"], MSG)
        with pytest.raises(SignatureError, match="not in the operators file"):
            verify(parse_allowed_signers(signers.read_text()), MSG, sig)
        assert not ssh_verify(signers, "outsider", MSG, sig, tmp_path)

    def test_signature_swapped_onto_another_key_is_refused(
        self, keys: tuple[Path, dict[str, Path]]
    ) -> None:
        """A signature whose embedded public key is replaced by another operator's fails."""
        signers, made = keys
        ops = parse_allowed_signers(signers.read_text())
        sig = ssh_sign(made["ed25519"], MSG)
        raw = base64.b64decode("".join(sig.strip().splitlines()[1:-1]))
        mine = base64.b64decode(Path(f"{made['ed25519']}.pub").read_text().split()[1])
        other = _keygen(made["ed25519"].parent / "other", "ed25519", None)
        theirs = base64.b64decode(Path(f"{other}.pub").read_text().split()[1])
        forged = raw.replace(mine, theirs)
        ops2 = Operators({**ops.keys, theirs: "mallory"})
        with pytest.raises(SignatureError, match="does not match"):
            verify(ops2, MSG, _armor(forged))


class TestGarbage:
    """Nothing a writer of Redis can put in a signature field raises anything but a refusal."""

    @settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.binary(max_size=600))
    def test_random_blobs_are_refused(self, data: bytes) -> None:
        """Random bytes, armored or not, are a SignatureError, never a crash or a principal."""
        ops = Operators({b"x": "alice"})
        for candidate in (data, _armor(data), _armor(b"SSHSIG\x00\x00\x00\x01" + data)):
            with pytest.raises(SignatureError):
                verify(ops, MSG, candidate)

    @settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0))
    def test_truncated_or_bitflipped_real_signature_is_refused(
        self, keys: tuple[Path, dict[str, Path]], cut: int, flip: int
    ) -> None:
        """A real signature cut short or with one bit flipped never verifies."""
        signers, made = keys
        ops = parse_allowed_signers(signers.read_text())
        raw = _REAL.get("sig") or base64.b64decode(
            "".join(ssh_sign(made["ed25519"], MSG).strip().splitlines()[1:-1])
        )
        _REAL["sig"] = raw
        with pytest.raises(SignatureError):
            verify(ops, MSG, _armor(raw[: min(cut, len(raw) - 1)]))
        i = flip % (len(raw) * 8)
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(SignatureError):
            verify(ops, MSG, _armor(bytes(flipped)))


_REAL: dict[str, bytes] = {}


class TestAllowedSigners:
    """The operators file: git-style lines, with a clear rule for what is not supported."""

    def test_other_namespaces_are_ignored_and_plain_lines_accepted(self, tmp_path: Path) -> None:
        """A `namespaces="git"` line is skipped; a line without namespaces= counts."""
        a, b = make_key(tmp_path / "a", "a"), make_key(tmp_path / "b", "b")
        text = signer_line("alice", a) + signer_line("bob", b).replace(
            'namespaces="killswitch"', 'namespaces="git"'
        )
        text += "# a comment\n\n" + signer_line("carol", b).replace('namespaces="killswitch" ', "")
        ops = parse_allowed_signers(text)
        assert ops.principals == ("alice", "carol")

    @pytest.mark.parametrize(
        ("option", "why"),
        [
            ('cert-authority,namespaces="killswitch"', "cert-authority"),
            ('namespaces="killswitch",valid-before="20990101"', "valid-before"),
            ('valid-after="20200101",namespaces="killswitch"', "valid-after"),
            ('namespaces="killswitch",no-touch-required', "unknown option"),
        ],
    )
    def test_unsupported_options_are_refused_naming_the_line(
        self, tmp_path: Path, option: str, why: str
    ) -> None:
        """Options that would narrow trust are refused, not silently dropped."""
        k = make_key(tmp_path / "k", "k")
        kind, b64 = Path(f"{k}.pub").read_text().split()[:2]
        with pytest.raises(SignersError, match=f"line 2: .*{why}"):
            parse_allowed_signers(f"\nalice {option} {kind} {b64}\n")

    @pytest.mark.parametrize("principal", ["*", "al*ce", "!bob", "alice,bob"])
    def test_wildcards_and_principal_lists_are_refused(
        self, tmp_path: Path, principal: str
    ) -> None:
        """One line, one named operator: patterns could make one key count as anyone."""
        k = make_key(tmp_path / "k", "k")
        with pytest.raises(SignersError, match="line 1"):
            parse_allowed_signers(signer_line(principal, k))

    def test_one_key_for_two_principals_is_refused(self, tmp_path: Path) -> None:
        """The same key under two names would let one person be both operators."""
        k = make_key(tmp_path / "k", "k")
        with pytest.raises(SignersError, match="one key, one operator"):
            parse_allowed_signers(signer_line("alice", k) + signer_line("bob", k))

    @pytest.mark.parametrize(
        "line",
        ["alice", "alice ssh-ed25519", "alice ssh-dss AAAA", "alice ssh-ed25519 !!notbase64"],
    )
    def test_malformed_lines_are_refused(self, line: str) -> None:
        """Broken lines are an error naming the line, never a crash."""
        with pytest.raises(SignersError, match="line 1"):
            parse_allowed_signers(line + "\n")


class TestSecurityKeys:
    """sk-ssh-ed25519 signatures (hardware keys), built here as a token would make them."""

    def _sk(self, flags: int) -> tuple[Operators, str]:
        priv = Ed25519PrivateKey.generate()
        pk = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ktype, app = b"sk-ssh-ed25519@openssh.com", b"ssh:"
        pub = _s(ktype) + _s(pk) + _s(app)
        signed = b"SSHSIG" + _s(b"killswitch") + _s(b"") + _s(b"sha512")
        signed += _s(hashlib.sha512(MSG).digest())
        counter = (7).to_bytes(4, "big")
        data = hashlib.sha256(app).digest() + bytes([flags]) + counter
        data += hashlib.sha256(signed).digest()
        inner = _s(ktype) + _s(priv.sign(data)) + bytes([flags]) + counter
        blob = b"SSHSIG" + (1).to_bytes(4, "big") + _s(pub) + _s(b"killswitch") + _s(b"")
        blob += _s(b"sha512") + _s(inner)
        return Operators({pub: "yubi"}), _armor(blob)

    def test_touched_security_key_signature_verifies(self) -> None:
        """With the user-presence flag set, a security-key signature names its principal."""
        ops, sig = self._sk(0x01)
        assert verify(ops, MSG, sig) == "yubi"

    def test_untouched_security_key_signature_is_refused(self) -> None:
        """Without user presence (no touch), the signature is refused as OpenSSH does."""
        ops, sig = self._sk(0x00)
        with pytest.raises(SignatureError, match="user presence"):
            verify(ops, MSG, sig)


BOOT = "b0" * 8
REQ = ArmRequest(
    "smars", 6, 9, 7, ("or-01", "or-02"), "open", 10**12,
    boots=(("or-01", BOOT), ("or-02", BOOT)),
)  # fmt: skip


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Operators, dict[str, Path]]:
    """Three operators: alice, bob, carol."""
    d = tmp_path_factory.mktemp("ops")
    made = {n: make_key(d / n, n) for n in ("alice", "bob", "carol")}
    return parse_allowed_signers("".join(signer_line(n, k) for n, k in made.items())), made


class TestProof:
    """A gate opens only for two distinct operators over this node, epoch and roster."""

    def _proof(self, keys: dict[str, Path], *who: str, req: ArmRequest = REQ) -> str:
        msg = req.encode()
        return Proof(msg, tuple(ssh_sign(keys[w], msg) for w in who)).to_text()

    @pytest.mark.parametrize(
        ("signers", "node", "host", "epoch", "want"),
        [
            (("alice", "bob"), "smars", "or-01", 7, ""),
            (("alice", "bob", "carol"), "smars", "or-02", 7, ""),
            (("alice", "bob"), "smars", "or-03", 7, UNLISTED),
            (("alice", "bob"), "smars", "or-01", 8, WRONG_EPOCH),
            (("alice", "bob"), "other", "or-01", 7, WRONG_NODE),
            (("alice",), "smars", "or-01", 7, ONE_OPERATOR),
            (("alice", "alice"), "smars", "or-01", 7, ONE_OPERATOR),
        ],
    )
    def test_gate_refusal_table(
        self,
        three: tuple[Operators, dict[str, Path]],
        signers: tuple[str, ...],
        node: str,
        host: str,
        epoch: int,
        want: str,
    ) -> None:
        """What a host decides for each combination of signers and what they bind."""
        ops, keys = three
        verdict = verify_proof(ops, self._proof(keys, *signers))
        assert gate_refusal(verdict, node, host, epoch)[0] == want

    def test_unsigned_garbage_and_no_operators(
        self, three: tuple[Operators, dict[str, Path]]
    ) -> None:
        """No proof, junk, a tampered message, or no operators file: each refused by name."""
        ops, keys = three
        assert verify_proof(ops, "").refusal == UNSIGNED
        assert verify_proof(ops, "{junk").refusal == BAD_PROOF
        assert verify_proof(None, self._proof(keys, "alice", "bob")).refusal == NO_OPERATORS
        good = Proof.from_text(self._proof(keys, "alice", "bob"))
        later = good.message.replace(b'"epoch":7', b'"epoch":70')
        assert verify_proof(ops, Proof(later, good.signatures).to_text()).refusal == BAD_SIGNATURE

    def test_request_encoding_round_trips_and_rejects_non_canonical(self) -> None:
        """The signed bytes decode to the same request; reordered JSON is not accepted."""
        assert ArmRequest.decode(REQ.encode()) == REQ
        with pytest.raises(ValueError, match="canonical"):
            ArmRequest.decode(REQ.encode().replace(b"{", b"{ ", 1))


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def _armor(blob: bytes) -> str:
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


class TestScopedRequest:
    """A scoped lift's request: the scope and the scopes version are signed; no gate opens."""

    def test_round_trip_keeps_scope_and_version(self) -> None:
        """A scoped request decodes to itself, scope version included."""
        req = ArmRequest("smars", 6, 9, 6, ("or-01",), "lift", 10**12, "host:or-01", 4)
        assert ArmRequest.decode(req.encode()) == req

    def test_scoped_request_must_keep_the_epoch(self) -> None:
        """A scoped request that moves the node's epoch is refused."""
        req = ArmRequest("smars", 6, 9, 7, ("or-01",), "lift", 10**12, "symbol:KCG", 4)
        with pytest.raises(ProofError, match="keep the node's epoch"):
            ArmRequest.decode(req.encode())

    def test_node_request_with_a_scope_version_is_not_canonical(self) -> None:
        """A node arm carrying a scope version is not what any caller signs."""
        raw = json.loads(REQ.encode())
        raw["scope_ver"] = 1
        data = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
        with pytest.raises(ProofError, match="canonical"):
            ArmRequest.decode(data)

    def test_scoped_proof_never_opens_a_gate(
        self, three: tuple[Operators, dict[str, Path]]
    ) -> None:
        """Two valid signatures over a scoped lift are refused by a gate as a node arm."""
        ops, keys = three
        req = ArmRequest("smars", 6, 9, 6, ("or-01",), "lift", 10**12, "host:or-01", 4)
        msg = req.encode()
        proof = Proof(msg, tuple(ssh_sign(keys[w], msg) for w in ("alice", "bob"))).to_text()
        refusal, _ = gate_refusal(verify_proof(ops, proof), "smars", "or-01", 6)
        assert refusal == BAD_PROOF
