"""NATS decentralised auth primitives: nkeys, JWTs signed with them, `.creds` files.

The format is nats-io/jwt v2's (what `nsc` writes and nats-server checks): header
`{"typ":"JWT","alg":"ed25519-nkey"}`, base64url claims, an Ed25519 signature by the
issuer's nkey. Only what Berth issues is modelled: operator, account and user claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nkeys

Role = Literal["operator", "account", "user"]
_PREFIX = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT, "user": nkeys.PREFIX_BYTE_USER}
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class NKey:
    """An nkey pair, held as its seed (`S...`); `public` is what JWTs and configs name."""

    seed: str

    @classmethod
    def generate(cls, role: Role) -> NKey:
        return cls(nkeys.encode_seed(os.urandom(32), _PREFIX[role]).decode())

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed.encode())).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


def encode_jwt(subject: str, name: str, nats: dict[str, Any], signer: NKey, *, expires: int | None = None) -> str:
    """A JWT for `subject` (a public nkey) with the `nats` claims, signed by `signer`."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": signer.public, "name": name, "sub": subject}
    if expires is not None:
        claims["exp"] = expires
    # jti: a hash of the standard claims, as nats-io/jwt makes it (an id, not a check).
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    claims["nats"] = {**nats, "version": 2}
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the server verifies; this is for reading our own)."""
    claims: dict[str, Any] = json.loads(_unb64(token.split(".")[1]))
    return claims


def creds_text(user_jwt: str, user_seed: str) -> str:
    """The `.creds` file every NATS client reads (nats-py: `user_credentials=`)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def creds_jwt(text: str) -> str:
    """The user JWT inside a `.creds` file's text."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and i + 1 < len(lines):
            return lines[i + 1].strip()
    raise ValueError("not a NATS .creds file: no user JWT in it")


def write_secret(path: Path, text: str) -> None:
    """Write a seed, creds or key file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
