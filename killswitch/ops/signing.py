"""Signing with the operator's own SSH key, by OpenSSH itself (`ssh-keygen -Y sign`).

OpenSSH does the signing so that keys in ssh-agent and on hardware tokens work and the
private key never passes through this process. Verification is `core.proof.sshsig`.
"""

from __future__ import annotations

import asyncio
import shutil

from killswitch.core.proof.sshsig import NAMESPACE

SIGN_TIMEOUT_S = 120.0  # a hardware key waits for a touch; a passphrase prompt for a human


class SignError(RuntimeError):
    """Signing failed; the message says what to do (one line)."""


async def ssh_sign(key: str, message: bytes, namespace: str = NAMESPACE) -> str:
    """The armored OpenSSH signature of `message` by `key` (a private key, or a public key
    whose private half is in ssh-agent)."""
    exe = shutil.which("ssh-keygen")
    if exe is None:
        raise SignError("ssh-keygen not found: install OpenSSH (Debian: openssh-client)")
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "-q", "-Y", "sign", "-n", namespace, "-f", key,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        raise SignError(f"cannot run ssh-keygen: {e}") from None
    try:
        async with asyncio.timeout(SIGN_TIMEOUT_S):
            out, err = await proc.communicate(message)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SignError(f"ssh-keygen did not sign within {SIGN_TIMEOUT_S:g}s") from None
    except asyncio.CancelledError:
        proc.kill()  # a caller's own deadline: leave no ssh-keygen waiting for a touch
        raise
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise SignError(f"ssh-keygen could not sign with {key}: {why[-1] if why else 'failed'}")
    return out.decode("ascii", errors="replace").strip() + "\n"
