"""Verify the JWT a CDS Hooks client sends with every call (CDS Hooks 2.0 "Trusting CDS Clients").

The issuer must be trusted. A `jku` header must be allow-listed for that issuer; others are never fetched.
The key is found by `kid` in the issuer's configured JWKS, or in the JWKS fetched (and cached) from the
allow-listed `jku`. The signature must verify with an allowed asymmetric algorithm (never `none` or HMAC).
`aud` must be exactly the endpoint URL that was called. `exp`, `iat` and `nbf` are checked against an injected
clock with a small leeway, and `jti` must be new (replay cache). Every failure raises `AuthenticationError`,
whose message is safe to log: it never contains the token.

`JwtVerifier.verify` runs every check. It is also split in two, so a caller on an event loop can keep I/O off it:
`check` does everything up to the signature and claims without I/O (or answers `KeyFetchNeeded` when the key must
first be fetched from a `jku`), and `check_replay` then does the replay write.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
import orjson
from jwt.types import Options

from spasticity_cds.errors import AuthenticationError

DEFAULT_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384")
ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
MAX_TOKEN_CHARS = 16_384
MAX_JTI_CHARS = 255
_LOGGED_VALUE_CHARS = 80

JsonObject = Mapping[str, Any]
ReplayCheck = Callable[[str, str, datetime], bool]
"""replay(issuer, jti, keep_until) -> True if the id is new (and now remembered), False if seen before."""
ReplayCheckAtOnce = Callable[[str, str, datetime], bool | None]
"""As ReplayCheck, or None when it cannot answer without waiting (and then nothing was remembered)."""
JwksFetcher = Callable[[str], JsonObject]
"""fetch_jwks(url) -> the parsed JWKS document; raises on any failure."""


def _rejected(reason: str) -> AuthenticationError:
    return AuthenticationError(f"client JWT rejected: {reason}")


def _loggable(value: object) -> str:
    """Render a client-supplied value for a log line: quoted, escaped and cut short."""
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:_LOGGED_VALUE_CHARS])


def index_jwks(jwks: object) -> dict[str, JsonObject]:
    """Map each `kid` of a JWKS to its key; keys without a kid or with a repeated kid are left out."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError('a JWKS must be a JSON object with a "keys" array')
    by_kid: dict[str, JsonObject] = {}
    duplicated: set[str] = set()
    for key in keys:
        kid = key.get("kid") if isinstance(key, Mapping) else None
        if not isinstance(kid, str) or not kid:
            continue
        if kid in by_kid:
            duplicated.add(kid)
        by_kid[kid] = key
    return {kid: key for kid, key in by_kid.items() if kid not in duplicated}


def load_jwks_file(path: Path) -> dict[str, Any]:
    """Read a JWKS (exchanged out of band with a CDS client) from a JSON file; ValueError if unusable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a JWKS: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a JWKS must be a JSON object")
    index_jwks(document)
    return document


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A CDS client we accept calls from, identified by its JWT `iss`.

    Keys come from `jwks` (configured out of band) and/or from the JWKS at one of the `jku_allowlist` URLs.
    `tenants`, when given, is the set of `tenant` claim values accepted (a token without `tenant` then fails).
    """

    iss: str
    jwks: JsonObject | None = None
    jku_allowlist: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    tenants: frozenset[str] | None = None
    static_keys: Mapping[str, JsonObject] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "jku_allowlist", tuple(self.jku_allowlist))
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        if self.tenants is not None:
            object.__setattr__(self, "tenants", frozenset(self.tenants))
        unsafe = [alg for alg in self.algorithms if alg not in ASYMMETRIC_ALGORITHMS]
        if unsafe or not self.algorithms:
            message = f"issuer {self.iss!r}: algorithms must be asymmetric JWS algorithms, got {unsafe}"
            raise ValueError(message)
        if self.jwks is None and not self.jku_allowlist:
            raise ValueError(f"issuer {self.iss!r}: configure a JWKS, an allowed jku URL, or both")
        object.__setattr__(self, "static_keys", index_jwks(self.jwks) if self.jwks is not None else {})


@dataclass(frozen=True, slots=True)
class CheckedToken:
    """A token that passed every check but the replay one (`JwtVerifier.check`); not yet a verified client."""

    iss: str
    jti: str
    kid: str
    alg: str
    audience: str
    issued_at: datetime
    expires_at: datetime
    tenant: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedClient(CheckedToken):
    """What a verified token (its jti remembered too) says about the calling CDS client; every field is safe to log.

    A subclass, so that a checked token whose replay check has not run cannot pass for a verified client.
    """


@dataclass(frozen=True, slots=True)
class KeyFetchNeeded:
    """`JwtVerifier.check` stopped: the key must first be fetched from the allowed `jku` (or is being fetched)."""

    jku: str


@dataclass(frozen=True, slots=True)
class _Signer:
    """Who says they signed a token, read from it before the signature check: nothing here is trusted yet."""

    issuer: TrustedIssuer
    alg: str
    kid: str
    jku: str | None


@dataclass
class _CachedJwks:
    keys: dict[str, JsonObject]
    fetched_at: datetime
    attempted_at: datetime


class JwksCache:
    """JWKS documents fetched from allow-listed `jku` URLs.

    A document is reused for `ttl`; an unknown `kid` triggers a refetch, at most once per
    `min_refresh_interval` per URL, so tokens with made-up kids cannot make us hammer the key endpoint.
    A failed fetch is also rate limited, and the keys fetched before it stay in use. Fetches run under a lock.
    """

    def __init__(
        self,
        fetch: JwksFetcher,
        clock: Callable[[], datetime],
        *,
        ttl: timedelta = timedelta(minutes=10),
        min_refresh_interval: timedelta = timedelta(seconds=60),
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._min_refresh_interval = min_refresh_interval
        self._entries: dict[str, _CachedJwks] = {}
        self._lock = threading.Lock()

    def find_key(self, url: str, kid: str) -> JsonObject | None:
        """Return the key with this kid from the JWKS at `url`, fetching or refreshing it when allowed."""
        with self._lock:
            now = self._clock()
            entry = self._entries.get(url)
            if entry is None or self._may_refresh(entry, kid, now):
                entry = self._refresh(url, entry, now)
            return entry.keys.get(kid)

    def cached_key(self, url: str, kid: str) -> JsonObject | KeyFetchNeeded | None:
        """The key `find_key` would return without fetching, or KeyFetchNeeded where it would fetch; no I/O.

        It does not wait for the lock either: a thread holding it may be fetching, so that too is KeyFetchNeeded.
        """
        if not self._lock.acquire(blocking=False):
            return KeyFetchNeeded(url)
        try:
            entry = self._entries.get(url)
            if entry is None or self._may_refresh(entry, kid, self._clock()):
                return KeyFetchNeeded(url)
            return entry.keys.get(kid)
        finally:
            self._lock.release()

    def _may_refresh(self, entry: _CachedJwks, kid: str, now: datetime) -> bool:
        if now - entry.attempted_at < self._min_refresh_interval:
            return False
        return kid not in entry.keys or now - entry.fetched_at >= self._ttl

    def _refresh(self, url: str, previous: _CachedJwks | None, now: datetime) -> _CachedJwks:
        """Fetch the JWKS; on failure keep the previous keys (or none) and remember the attempt."""
        try:
            keys = index_jwks(self._fetch(url))
        except Exception as exc:
            failed = previous or _CachedJwks(keys={}, fetched_at=now, attempted_at=now)
            failed.attempted_at = now
            self._entries[url] = failed
            if previous is None:
                raise _rejected(f"cannot fetch the JWKS at allowed jku {_loggable(url)}") from exc
            return failed
        entry = _CachedJwks(keys=keys, fetched_at=now, attempted_at=now)
        self._entries[url] = entry
        return entry


class JwtVerifier:
    """Checks CDS client JWTs against a list of trusted issuers; safe to share between threads.

    `verify` runs every check; `check` then `check_replay` run them in two steps, the first without I/O.
    """

    def __init__(
        self,
        trusted: Sequence[TrustedIssuer],
        replay: ReplayCheck,
        clock: Callable[[], datetime],
        *,
        replay_at_once: ReplayCheckAtOnce | None = None,
        leeway_s: int = 30,
        max_lifetime_s: int | None = 3600,
        fetch_jwks: JwksFetcher | None = None,
        jwks_ttl_s: int = 600,
        jwks_min_refresh_interval_s: int = 60,
    ) -> None:
        self._issuers = {issuer.iss: issuer for issuer in trusted}
        self._replay = replay
        self._replay_at_once = replay_at_once
        self._clock = clock
        self._leeway = leeway_s
        self._max_lifetime = max_lifetime_s
        self._jwks_cache = (
            JwksCache(
                fetch_jwks,
                clock,
                ttl=timedelta(seconds=jwks_ttl_s),
                min_refresh_interval=timedelta(seconds=jwks_min_refresh_interval_s),
            )
            if fetch_jwks is not None
            else None
        )

    def verify(self, token: str, audience: str) -> VerifiedClient:
        """Verify `token` for a call to the endpoint URL `audience`; raise `AuthenticationError` if it fails.

        `check` then `check_replay`, except that the key is fetched from an allowed `jku` when due. An error raised
        by `replay` (such as `StoreError`) propagates: it is not an authentication failure.
        """
        signer = self._signer(token)
        return self.check_replay(self._checked_token(token, signer, self._fetched_key(signer), audience))

    def check(self, token: str, audience: str) -> CheckedToken | KeyFetchNeeded:
        """Every check of `verify` but the replay one, without I/O; KeyFetchNeeded where `verify` would fetch a key.

        Raises `AuthenticationError` as `verify` does. Nothing is remembered: pass the result to `check_replay`.
        """
        signer = self._signer(token)
        key = self._cached_key(signer)
        if isinstance(key, KeyFetchNeeded):
            return key
        return self._checked_token(token, signer, key, audience)

    def check_replay(self, checked: CheckedToken) -> VerifiedClient:
        """Remember the jti of a checked token (through `replay`, a store write); rejected if it was seen before.

        The jti is remembered until the token can no longer pass the `exp` check.
        An error raised by `replay` (such as `StoreError`) propagates: it is not an authentication failure.
        """
        return self._verdict(checked, self._replay(checked.iss, checked.jti, self._keep_until(checked)))

    def check_replay_at_once(self, checked: CheckedToken) -> VerifiedClient | None:
        """`check_replay` through `replay_at_once` (no waiting, so it may run on an event loop); None when that
        cannot answer now, or was not given: then nothing was remembered, and `check_replay` must run."""
        if self._replay_at_once is None:
            return None
        new = self._replay_at_once(checked.iss, checked.jti, self._keep_until(checked))
        return None if new is None else self._verdict(checked, new)

    def _keep_until(self, checked: CheckedToken) -> datetime:
        return checked.expires_at + timedelta(seconds=self._leeway)

    @staticmethod
    def _verdict(checked: CheckedToken, new: bool) -> VerifiedClient:
        if not new:
            raise _rejected(f"jti {_loggable(checked.jti)} from {_loggable(checked.iss)} was already used")
        return VerifiedClient(**{part.name: getattr(checked, part.name) for part in fields(CheckedToken)})

    def _signer(self, token: str) -> _Signer:
        """Read the token's issuer, algorithm, kid and jku, each checked against what the issuer allows."""
        header, unverified_claims = _read_unverified(token)
        issuer = self._trusted_issuer(unverified_claims)
        alg = _checked_algorithm(header, issuer)
        kid = _checked_header_fields(header)
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in issuer.jku_allowlist):
            raise _rejected(f"jku {_loggable(jku)} is not allowed for issuer {_loggable(issuer.iss)}")
        return _Signer(issuer, alg, kid, jku)

    def _checked_token(self, token: str, signer: _Signer, key: JsonObject, audience: str) -> CheckedToken:
        """The signature and claim checks (CPU only)."""
        claims = _verified_claims(token, key, signer.alg)
        issued_at, expires_at = self._checked_times(claims)
        _check_audience(claims, audience)
        tenant = _checked_tenant(claims, signer.issuer)
        jti = _checked_jti(claims)
        subject = claims.get("sub")
        return CheckedToken(
            iss=signer.issuer.iss,
            jti=jti,
            kid=signer.kid,
            alg=signer.alg,
            audience=audience,
            issued_at=issued_at,
            expires_at=expires_at,
            tenant=tenant,
            subject=subject if isinstance(subject, str) else None,
        )

    def _trusted_issuer(self, claims: JsonObject) -> TrustedIssuer:
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _rejected(f"issuer {_loggable(iss)} is not trusted")
        return issuer

    def _fetched_key(self, signer: _Signer) -> JsonObject:
        """The signer's key: configured, else from the jku's JWKS, fetched or refreshed when due."""
        key = signer.issuer.static_keys.get(signer.kid)
        if key is None and signer.jku is not None and self._jwks_cache is not None:
            key = self._jwks_cache.find_key(signer.jku, signer.kid)
        return _found(key, signer)

    def _cached_key(self, signer: _Signer) -> JsonObject | KeyFetchNeeded:
        """The key `_fetched_key` would return, or KeyFetchNeeded where it would fetch."""
        key: JsonObject | KeyFetchNeeded | None = signer.issuer.static_keys.get(signer.kid)
        if key is None and signer.jku is not None and self._jwks_cache is not None:
            key = self._jwks_cache.cached_key(signer.jku, signer.kid)
        return key if isinstance(key, KeyFetchNeeded) else _found(key, signer)

    def _checked_times(self, claims: JsonObject) -> tuple[datetime, datetime]:
        now = self._clock().timestamp()
        expires, issued = _numeric_claim(claims, "exp"), _numeric_claim(claims, "iat")
        if now >= expires + self._leeway:
            raise _rejected("token has expired")
        if issued > now + self._leeway:
            raise _rejected("token was issued in the future (iat)")
        if "nbf" in claims and _numeric_claim(claims, "nbf") > now + self._leeway:
            raise _rejected("token is not valid yet (nbf)")
        if expires <= issued or (self._max_lifetime is not None and expires - issued > self._max_lifetime):
            raise _rejected(f"token lifetime exp - iat = {expires - issued:.0f} s is not allowed")
        return datetime.fromtimestamp(issued, UTC), datetime.fromtimestamp(expires, UTC)


def _found(key: JsonObject | None, signer: _Signer) -> JsonObject:
    """The key, or the rejection when the signer has none."""
    if key is None:
        raise _rejected(f"no key with kid {_loggable(signer.kid)} for issuer {_loggable(signer.issuer.iss)}")
    return key


def _read_unverified(token: str) -> tuple[JsonObject, JsonObject]:
    """Header and claims, read only to pick the issuer's keys; nothing here is trusted before the signature check.

    Read here rather than by PyJWT, whose strict reading (every character checked in Python) then runs once, in the
    verified decode, instead of twice per call.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise _rejected("token is not a string of acceptable length")
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        header, claims = (orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2])
    except (ValueError, TypeError):  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        raise _rejected("token is not a well-formed JWS with readable claims") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _rejected("token is not a well-formed JWS with readable claims")
    return header, claims


def _checked_algorithm(header: JsonObject, issuer: TrustedIssuer) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
        raise _rejected(f"algorithm {_loggable(alg)} is never accepted")
    if alg not in issuer.algorithms:
        raise _rejected(f"algorithm {alg} is not allowed for issuer {_loggable(issuer.iss)}")
    return alg


def _checked_header_fields(header: JsonObject) -> str:
    """Check `typ` and return the `kid`."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise _rejected(f"header typ {_loggable(typ)} is not JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _rejected("header has no kid")
    return kid


def _verified_claims(token: str, key: JsonObject, alg: str) -> JsonObject:
    """Verify the signature with `key` and `alg` and return the claims; times and audience come later."""
    if key.get("alg", alg) != alg or key.get("use", "sig") != "sig":
        raise _rejected(f"key {_loggable(key.get('kid'))} is not a signing key for {alg}")
    options: Options = {
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
        "enforce_minimum_key_length": True,
    }
    try:
        signing_key = _signing_key(orjson.dumps(key, option=orjson.OPT_SORT_KEYS), alg)
        claims: dict[str, Any] = jwt.decode(token, key=signing_key, algorithms=[alg], options=options)
    except jwt.InvalidSignatureError:
        raise _rejected("signature does not verify") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _rejected(f"token cannot be verified ({type(exc).__name__})") from None
    return claims


@lru_cache(maxsize=256)
def _signing_key(jwk: bytes, alg: str) -> jwt.PyJWK:
    """The key object for a JWK (by its canonical JSON, so a changed JWKS entry is a new key); building one checks
    the curve point, which cost as much per call as the rest of the claims handling."""
    return jwt.PyJWK(orjson.loads(jwk), algorithm=alg)


def _numeric_claim(claims: JsonObject, name: str) -> float:
    """A NumericDate claim: a finite number of seconds within the years a datetime holds."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _rejected(f"claim {name} is missing or not a number")
    try:
        seconds = float(value)
        datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):  # NaN, infinity, 1e400 or past the year 9999
        raise _rejected(f"claim {name} is not a usable time") from None
    return seconds


def _check_audience(claims: JsonObject, audience: str) -> None:
    aud = claims.get("aud")
    if aud not in (audience, [audience]):
        raise _rejected(f"aud {_loggable(aud)} is not the endpoint called ({_loggable(audience)})")


def _checked_tenant(claims: JsonObject, issuer: TrustedIssuer) -> str | None:
    tenant = claims.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise _rejected("claim tenant is not a string")
    if issuer.tenants is not None and tenant is None:  # _loggable would name the type: "tenant 'NoneType'"
        raise _rejected(f"no tenant claim, and issuer {_loggable(issuer.iss)} allows only listed tenants")
    if issuer.tenants is not None and tenant not in issuer.tenants:
        raise _rejected(f"tenant {_loggable(tenant)} is not allowed for issuer {_loggable(issuer.iss)}")
    return tenant


def _checked_jti(claims: JsonObject) -> str:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS or "\x00" in jti:
        raise _rejected(f"claim jti is missing, longer than {MAX_JTI_CHARS} characters or holds a NUL")
    return jti
