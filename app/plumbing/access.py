"""Access control: who a request comes from (a verified bearer token) and what it may do.

With AUTH_MODE=off (the default) every request is the unrestricted principal: the service
behaves as if there were no access control. With AUTH_MODE=jwt an endpoint that needs a caller
verifies `Authorization: Bearer <JWT>`: the algorithm is pinned to the configured key (HS256 for
AUTH_JWT_SECRET, RS256 or ES256 for AUTH_JWT_PUBLIC_KEY; never `none`), `exp` is required, `iss`
and `aud` are checked when configured. The claims used are `sub` (a customer's customer id) and
`role` (`admin` or `customer`). Each part states its rules beside its routes with `signed_in`,
`admin_only` and the Principal's checks. `/metrics` wants METRICS_TOKEN when it is set.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.applications import Starlette
from starlette.requests import Request

from app.plumbing.problems import Problem
from app.plumbing.settings import Settings, SettingsError

Role = Literal["admin", "customer"]
ROLES: Final[tuple[Role, ...]] = ("admin", "customer")
Key = str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_MIN_SECRET_BYTES: Final = 32  # RFC 7518 §3.2: an HS256 key at least as long as its hash
_MIN_RSA_BITS: Final = 2048
_LEEWAY_S: Final = 5  # clock skew between the token's issuer and this server
_PRINCIPAL: Final = "shop.principal"  # where a request's verified principal is kept

P = ParamSpec("P")
R = TypeVar("R")


class Unauthorized(Problem):
    """No usable credentials: 401 with the Bearer challenge (RFC 6750 §3)."""

    status = 401
    slug = "unauthorized"

    def __init__(self, detail: str, *, invalid: bool = True) -> None:
        challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(Problem):
    """A verified caller asking for what its role does not allow."""

    status = 403
    slug = "forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: the `sub` and `role` of a verified token."""

    sub: str
    role: Role

    @property
    def customer(self) -> str | None:
        """The one customer this principal acts for; None when it may act for any."""
        return self.sub if self.role == "customer" else None

    @property
    def identity(self) -> str:
        """Tells this principal's requests from another's; '' for the unrestricted one."""
        return f"{self.role}:{self.sub}" if self.sub else ""

    def may_act_for(self, customer_id: str) -> bool:
        return self.customer in (None, customer_id)

    def require_admin(self) -> None:
        if self.role != "admin":
            raise Forbidden("only an administrator may do this")

    def require_customer(self, customer_id: str) -> None:
        """Raises Forbidden unless this principal may act for `customer_id`."""
        if not self.may_act_for(customer_id):
            raise Forbidden(f"a customer may act only for themselves, not for {customer_id!r}")


# Access control off: every request may do everything (a token's `sub` is never empty).
UNRESTRICTED: Final = Principal(sub="", role="admin")


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Verifies bearer tokens with one key and the one algorithm that key is for."""

    key: Key
    algorithm: str
    issuer: str = ""
    audience: str = ""

    def verify(self, token: str) -> Principal:
        """The token's principal. Raises Unauthorized when its signature or algorithm is wrong,
        it has expired, or `exp`, `iss`, `aud` (the last two when configured), `sub` or `role`
        is missing or wrong."""
        required = ["exp", "sub", "role"]
        required += ["iss"] if self.issuer else []
        required += ["aud"] if self.audience else []
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                options={"require": required, "enforce_minimum_key_length": True},
                issuer=self.issuer or None,
                audience=self.audience or None,
                leeway=_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from None
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    sub, role = claims["sub"], claims["role"]
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("the token's sub must be a non-empty string")
    if role not in ROLES:
        raise Unauthorized(f"the token's role must be one of {', '.join(ROLES)}")
    return Principal(sub=sub, role=role)


@dataclass(frozen=True, slots=True)
class AccessControl:
    """An app's access control: its verifier (None with AUTH_MODE=off) and METRICS_TOKEN."""

    verifier: TokenVerifier | None = None
    metrics_token: str = ""

    @classmethod
    def of(cls, settings: Settings) -> AccessControl:
        """Raises SettingsError naming the variable when AUTH_MODE or its key is unusable."""
        if settings.auth_mode not in ("off", "jwt"):
            raise SettingsError(f"AUTH_MODE must be off or jwt, got {settings.auth_mode!r}")
        verifier = verifier_of(settings) if settings.auth_mode == "jwt" else None
        return cls(verifier=verifier, metrics_token=settings.metrics_token)

    def authenticate(self, request: Request) -> Principal:
        """UNRESTRICTED when access control is off, else the bearer token's principal.
        Raises Unauthorized."""
        if self.verifier is None:
            return UNRESTRICTED
        return self.verifier.verify(bearer_token(request))


def verifier_of(settings: Settings) -> TokenVerifier:
    """The verifier of AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY (exactly one must be set)."""
    secret, pem = settings.auth_jwt_secret, settings.auth_jwt_public_key
    if secret and pem:
        raise SettingsError("set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY, not both")
    if not (secret or pem):
        raise SettingsError(
            "AUTH_MODE=jwt needs AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256/ES256 PEM)"
        )
    key, algorithm = (hmac_secret(secret), "HS256") if secret else public_key(pem)
    return TokenVerifier(key, algorithm, settings.auth_jwt_issuer, settings.auth_jwt_audience)


def hmac_secret(secret: str) -> str:
    if len(secret.encode()) < _MIN_SECRET_BYTES:
        raise SettingsError(f"AUTH_JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes long")
    return secret


def public_key(pem: str) -> tuple[Key, str]:
    """The key and its algorithm: RS256 for RSA (2048 bits or more), ES256 for P-256."""
    text = pem if "\n" in pem else pem.replace("\\n", "\n")  # env files hold one line
    try:
        key = load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SettingsError(f"AUTH_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise SettingsError(
        f"AUTH_JWT_PUBLIC_KEY must be an RSA key of {_MIN_RSA_BITS} bits or more (RS256)"
        " or a P-256 key (ES256)"
    )


def bearer_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`. Raises Unauthorized."""
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("this needs an Authorization: Bearer <token> header", invalid=False)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected an Authorization: Bearer <token> header")
    return token.strip()


def install(app: Starlette, control: AccessControl) -> None:
    app.state.access = control


def _control(request: Request) -> AccessControl:
    # an app that never installed access control (a test's bare Starlette app) has none
    control: AccessControl = getattr(request.app.state, "access", _OFF)
    return control


_OFF: Final = AccessControl()


def principal(request: Request) -> Principal:
    """Who `request` comes from, verified once per request. Raises Unauthorized."""
    found: Principal | None = request.scope.get(_PRINCIPAL)
    if found is None:
        found = request.scope[_PRINCIPAL] = _control(request).authenticate(request)
    return found


def signed_in(
    endpoint: Callable[Concatenate[Request, P], Awaitable[R]],
) -> Callable[Concatenate[Request, P], Awaitable[R]]:
    """`endpoint` for any verified caller: 401 before it runs otherwise."""

    @functools.wraps(endpoint)
    async def guarded(request: Request, /, *args: P.args, **kwargs: P.kwargs) -> R:
        principal(request)
        return await endpoint(request, *args, **kwargs)

    return guarded


def admin_only(
    endpoint: Callable[Concatenate[Request, P], Awaitable[R]],
) -> Callable[Concatenate[Request, P], Awaitable[R]]:
    """`endpoint` for administrators: 401 without a valid token, 403 for a customer, both
    before it runs."""

    @functools.wraps(endpoint)
    async def guarded(request: Request, /, *args: P.args, **kwargs: P.kwargs) -> R:
        principal(request).require_admin()
        return await endpoint(request, *args, **kwargs)

    return guarded


def metrics_token_only(
    endpoint: Callable[[Request], Awaitable[R]],
) -> Callable[[Request], Awaitable[R]]:
    """`endpoint` open to anyone, or only to `Authorization: Bearer <METRICS_TOKEN>` when
    METRICS_TOKEN is set (whatever AUTH_MODE says)."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> R:
        expected = _control(request).metrics_token.encode()
        if expected and not hmac.compare_digest(bearer_token(request).encode(), expected):
            raise Unauthorized("wrong metrics token")
        return await endpoint(request)

    return guarded


def mint_token(
    secret: str, sub: str, role: Role, ttl_s: int, *, issuer: str = "", audience: str = ""
) -> str:
    """An HS256 token for `sub` as `role`, valid for `ttl_s` seconds (local use, tests).
    Raises SettingsError when the secret is too short."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "role": role, "iat": now, "exp": now + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, hmac_secret(secret), algorithm="HS256")
