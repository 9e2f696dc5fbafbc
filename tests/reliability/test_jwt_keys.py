"""JWT verification errors are refusals, never server errors (docs/security.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from flask_eventstream import EventStream

from ..test_auth import status


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT with *secret* as the HMAC key, signed by hand (PyJWT refuses a
    PEM key as an HMAC secret, which is exactly what an attacker ignores)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64(signature.digest())}"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture
def rsa_app(rsa_keys: tuple[bytes, bytes]) -> Flask:
    app = Flask(__name__)
    app.config.update(
        EVENTSTREAM_HEARTBEAT=0.5,
        EVENTSTREAM_JWT_KEY=rsa_keys[1],
        EVENTSTREAM_JWT_ALGORITHMS=("RS256", "HS256"),
    )
    EventStream(app)
    return app


class TestRSAKeyWithHS256Allowed:
    def test_hs256_token_forged_with_the_public_key_is_401(
        self, rsa_app: Flask, rsa_keys: tuple[bytes, bytes]
    ) -> None:
        """An HS256 token whose HMAC key is the public PEM: 401, not 500."""
        claims = {"channels": ["*"], "exp": int(time.time()) + 60}
        forged = forge_hs256(claims, rsa_keys[1])
        code, text = status(rsa_app.test_client(), f"/stream/a?token={forged}")
        assert code == 401, text

    def test_rs256_token_signed_with_the_private_key_is_accepted(
        self, rsa_app: Flask, rsa_keys: tuple[bytes, bytes]
    ) -> None:
        """The genuine RS256 token still opens the stream."""
        claims = {"channels": ["a"], "exp": int(time.time()) + 60}
        token = jwt.encode(claims, rsa_keys[0], algorithm="RS256")
        assert status(rsa_app.test_client(), f"/stream/a?token={token}")[0] == 200
