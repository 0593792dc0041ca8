"""Bearer tokens are verified with the algorithm the configured key is for, and refused (401)
for any wrong signature, algorithm, expiry, issuer, audience or claim; bad access settings stop
the start naming the variable (app/plumbing/access.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.requests import Request

from app.__main__ import main
from app.main import create_app
from app.plumbing.access import (
    ROLES,
    UNRESTRICTED,
    AccessControl,
    Forbidden,
    Principal,
    Role,
    TokenVerifier,
    Unauthorized,
    bearer_token,
    mint_token,
    verifier_of,
)
from app.plumbing.settings import Settings, SettingsError
from tests.support.projectfiles import COMPOSE, ROOT, load_yaml

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"
ISSUER = "https://issuer.test"
AUDIENCE = "shop-api"
VERIFIER = TokenVerifier(SECRET, "HS256", ISSUER, AUDIENCE)


def _claims(**changes: Any) -> dict[str, Any]:
    claims = {"sub": "alice", "role": "customer", "exp": int(time.time()) + 60}
    claims |= {"iss": ISSUER, "aud": AUDIENCE}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    """`alg: none`: a token with no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _hmac_signed(claims: dict[str, Any], secret: bytes) -> str:
    """HS256 with any bytes as the secret (PyJWT refuses a PEM key as an HMAC secret)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _tampered(token: str) -> str:
    """The same signature over another payload: a customer made admin."""
    header, _, signature = token.split(".")
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    return f"{header}.{payload}.{signature}"


def _pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("role", ROLES)
def test_a_valid_token_names_its_principal(role: Role) -> None:
    assert VERIFIER.verify(_sign(_claims(role=role))) == Principal(sub="alice", role=role)


# each bad token, and what its refusal says (so it is refused for that reason)
REFUSED: dict[str, tuple[Callable[[], str], str]] = {
    "tampered payload": (lambda: _tampered(_sign(_claims())), "Signature"),
    "signed with another secret": (lambda: _sign(_claims(), SECRET + "-other"), "Signature"),
    "expired": (lambda: _sign(_claims(exp=int(time.time()) - 60)), "expired"),
    "no exp": (lambda: _sign(_claims(exp=None)), '"exp"'),
    "wrong issuer": (lambda: _sign(_claims(iss="https://elsewhere.test")), "issuer"),
    "no issuer": (lambda: _sign(_claims(iss=None)), '"iss"'),
    "wrong audience": (lambda: _sign(_claims(aud="another-api")), "Audience"),
    "no audience": (lambda: _sign(_claims(aud=None)), '"aud"'),
    "alg none": (lambda: _unsigned(_claims()), "alg value is not allowed"),
    "another HMAC algorithm": (
        lambda: _sign(_claims(), SECRET * 2, "HS512"),
        "alg value is not allowed",
    ),
    "unknown role": (lambda: _sign(_claims(role="root")), "role"),
    "no role": (lambda: _sign(_claims(role=None)), '"role"'),
    "no sub": (lambda: _sign(_claims(sub=None)), '"sub"'),
    "empty sub": (lambda: _sign(_claims(sub="")), "sub"),
    "not a JWT": (lambda: "not-a.jwt", "segments"),
}


@pytest.mark.parametrize(("make", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_token_is_unauthorized(make: Callable[[], str], reason: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        VERIFIER.verify(make())
    assert reason in refused.value.detail
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert refused.value.document()["title"] == "Unauthorized"


def test_issuer_and_audience_are_optional_when_not_configured() -> None:
    verifier = TokenVerifier(SECRET, "HS256")
    assert verifier.verify(_sign(_claims(iss=None, aud=None))).sub == "alice"
    with pytest.raises(Unauthorized):  # an audience nobody configured is not ours
        verifier.verify(_sign(_claims(iss=None)))


@pytest.mark.parametrize(
    ("private_key", "algorithm"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
    ids=["RSA", "P-256"],
)
def test_a_public_key_pins_its_own_algorithm(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str
) -> None:
    pem = _pem(private_key)
    verifier = verifier_of(Settings(auth_mode="jwt", auth_jwt_public_key=pem))
    assert verifier.algorithm == algorithm
    assert verifier.verify(_sign(_claims(iss=None, aud=None), private_key, algorithm)).sub
    one_line = pem.replace("\n", "\\n")  # as an env file holds it
    assert verifier_of(Settings(auth_mode="jwt", auth_jwt_public_key=one_line)).key
    confused = _hmac_signed(_claims(iss=None, aud=None), pem.encode())  # the public key as secret
    for token in (confused, _unsigned(_claims(iss=None, aud=None))):
        with pytest.raises(Unauthorized):
            verifier.verify(token)
    stranger = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else None
    stranger = stranger or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):
        verifier.verify(_sign(_claims(iss=None, aud=None), stranger, algorithm))


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"AUTH_MODE": "on"}, "AUTH_MODE"),
        ({"AUTH_MODE": "jwt"}, "AUTH_JWT_SECRET"),
        ({"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": "short"}, "AUTH_JWT_SECRET"),
        ({"AUTH_MODE": "jwt", "AUTH_JWT_PUBLIC_KEY": "not a pem"}, "AUTH_JWT_PUBLIC_KEY"),
        (
            {"AUTH_MODE": "jwt", "AUTH_JWT_SECRET": SECRET, "AUTH_JWT_PUBLIC_KEY": "x"},
            "AUTH_JWT_PUBLIC_KEY",
        ),
        (
            {
                "AUTH_MODE": "jwt",
                "AUTH_JWT_PUBLIC_KEY": _pem(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key the start must refuse
                ),
            },
            "AUTH_JWT_PUBLIC_KEY",
        ),
        (
            {
                "AUTH_MODE": "jwt",
                "AUTH_JWT_PUBLIC_KEY": _pem(ec.generate_private_key(ec.SECP384R1())),
            },
            "AUTH_JWT_PUBLIC_KEY",
        ),
    ],
    ids=["unknown mode", "no key", "short secret", "not PEM", "both keys", "RSA-1024", "P-384"],
)
def test_unusable_access_settings_stop_the_start_naming_the_variable(
    environ: dict[str, str], named: str
) -> None:
    settings = Settings.from_env(environ)
    with pytest.raises(SettingsError, match=named):
        AccessControl.of(settings)
    with pytest.raises(SettingsError, match=named):
        create_app(settings)


def test_access_control_off_lets_everyone_in_whatever_they_send() -> None:
    control = AccessControl.of(Settings())
    assert control.verifier is None
    assert control.authenticate(_request("Bearer garbage")) is UNRESTRICTED
    assert control.authenticate(_request(None)) is UNRESTRICTED


def _request(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_the_bearer_header_is_read_case_insensitively_and_strictly() -> None:
    assert bearer_token(_request("bearer abc")) == "abc"
    with pytest.raises(Unauthorized) as missing:
        bearer_token(_request(None))
    assert missing.value.headers["WWW-Authenticate"] == "Bearer"  # no error: nothing was sent
    for header in ("Basic YWxpY2U6eA==", "Bearer", "Bearer   ", "abc"):
        with pytest.raises(Unauthorized):
            bearer_token(_request(header))


def test_customers_act_only_for_themselves_admins_for_anyone() -> None:
    alice = Principal(sub="alice", role="customer")
    admin = Principal(sub="ops", role="admin")
    assert (alice.customer, admin.customer, UNRESTRICTED.customer) == ("alice", None, None)
    assert alice.may_act_for("alice")
    assert not alice.may_act_for("bob")
    assert admin.may_act_for("bob")
    assert UNRESTRICTED.may_act_for("bob")
    with pytest.raises(Forbidden) as refused:
        alice.require_customer("bob")
    assert refused.value.status == 403
    with pytest.raises(Forbidden):
        alice.require_admin()
    admin.require_admin()
    admin.require_customer("bob")
    assert (alice.identity, admin.identity, UNRESTRICTED.identity) == (
        "customer:alice",
        "admin:ops",
        "",
    )


def test_minted_tokens_carry_the_configured_issuer_and_audience() -> None:
    token = mint_token(SECRET, "alice", "customer", 60, issuer=ISSUER, audience=AUDIENCE)
    assert VERIFIER.verify(token) == Principal(sub="alice", role="customer")
    with pytest.raises(Unauthorized):  # without them this verifier refuses it
        VERIFIER.verify(mint_token(SECRET, "alice", "customer", 60))
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET"):
        mint_token("short", "alice", "customer", 60)


def test_the_token_command_prints_a_token_this_service_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTH_JWT_SECRET", SECRET)
    monkeypatch.setenv("AUTH_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("AUTH_JWT_AUDIENCE", AUDIENCE)
    assert main(["token", "--sub", "ops", "--role", "admin", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip()
    assert VERIFIER.verify(token) == Principal(sub="ops", role="admin")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert claims["exp"] - claims["iat"] == 120


def test_the_token_command_needs_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUTH_JWT_SECRET", raising=False)
    assert main(["token", "--sub", "alice", "--role", "customer"]) == 2
    assert "AUTH_JWT_SECRET" in capsys.readouterr().err


def test_compose_runs_the_app_with_access_control_on_and_a_usable_secret() -> None:
    app = load_yaml(COMPOSE)["services"]["app"]
    assert app["environment"]["AUTH_MODE"] == "jwt"
    assert {"path": ".env.example"} in app["env_file"]
    lines = (ROOT / ".env.example").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    control = AccessControl.of(Settings.from_env({**env, "AUTH_MODE": "jwt"}))
    assert control.verifier is not None
    assert control.verifier.algorithm == "HS256"
