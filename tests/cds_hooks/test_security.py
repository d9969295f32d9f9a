"""CDS Hooks client JWT verification: what is accepted, and every way a token is turned away."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from spasticity_cds.cds_hooks.security import (
    CheckedToken,
    JwtVerifier,
    KeyFetchNeeded,
    TrustedIssuer,
    VerifiedClient,
    load_jwks_file,
)
from spasticity_cds.errors import AuthenticationError

NOW = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone(timedelta(hours=-5)))
ISS = "https://ehr.example.org"
SERVICE_URL = "https://cds.example.org/cds-services/als-spasticity"
FEEDBACK_URL = f"{SERVICE_URL}/feedback"
ALLOWED_JKU = "https://ehr.example.org/.well-known/jwks.json"
EC_KID = "ec-key-1"
RSA_KID = "rsa-key-1"

AnyPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Keys:
    """The test client's signing keys and the public JWKS it publishes."""

    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    jwks: dict[str, Any]

    def public_pem(self) -> bytes:
        return self.ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class ReplayCache:
    """An in-memory stand-in for FeedbackStore.remember_jti that records its calls."""

    seen: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, str, datetime]] = field(default_factory=list)

    def __call__(self, issuer: str, jti: str, keep_until: datetime) -> bool:
        self.calls.append((issuer, jti, keep_until))
        if (issuer, jti) in self.seen:
            return False
        self.seen.add((issuer, jti))
        return True


@dataclass
class Fetcher:
    """A JWKS fetcher that serves fixed documents and records every URL asked for."""

    documents: dict[str, dict[str, Any]]
    calls: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> dict[str, Any]:
        self.calls.append(url)
        return self.documents[url]


class Clock:
    """A frozen, movable clock."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _public_jwk(key: AnyPrivateKey, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Fresh keys for this test run; no private key is ever committed."""
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [_public_jwk(ec_key, EC_KID, "ES384"), _public_jwk(rsa_key, RSA_KID, "RS384")]}
    return Keys(ec_key, rsa_key, jwks)


def claims(**overrides: Any) -> dict[str, Any]:
    issued = int(NOW.timestamp())
    base = {"iss": ISS, "aud": SERVICE_URL, "iat": issued, "exp": issued + 300, "jti": str(uuid.uuid4())}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(key: AnyPrivateKey, payload: dict[str, Any], alg: str = "ES384", **header: Any) -> str:
    kid = header.pop("kid", EC_KID if alg.startswith("ES") else RSA_KID)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, "typ": "JWT", **header})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None = None) -> str:
    """Build a token by hand: `alg: none`, or HMAC-SHA384 keyed with `secret` (PyJWT won't make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha384).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def replay() -> ReplayCache:
    return ReplayCache()


@pytest.fixture
def make_verifier(keys: Keys, replay: ReplayCache, clock: Clock) -> Callable[..., JwtVerifier]:
    """Build a verifier trusting ISS with the test JWKS; keywords override issuer or verifier settings."""

    def build(issuer: TrustedIssuer | None = None, fetch_jwks: Fetcher | None = None, **options: Any) -> JwtVerifier:
        trusted = issuer or TrustedIssuer(iss=ISS, jwks=keys.jwks)
        return JwtVerifier([trusted], replay, clock, fetch_jwks=fetch_jwks, **options)

    return build


@pytest.fixture
def verifier(make_verifier: Callable[..., JwtVerifier]) -> JwtVerifier:
    return make_verifier()


def assert_rejected(
    verifier: JwtVerifier, token: str, reason: str, audience: str = SERVICE_URL, *, by_check: bool = True
) -> None:
    """`verify` rejects the token for `reason` with a 401 that holds no token; so does `check` first, unless the
    rejection needs the replay write or a key fetch (`by_check=False`)."""
    for run in (verifier.check, verifier.verify) if by_check else (verifier.verify,):
        with pytest.raises(AuthenticationError, match=reason) as raised:
            run(token, audience)
        assert token not in str(raised.value)
        assert raised.value.http_status == 401


def _es384_client(jti: str) -> dict[str, Any]:
    """What the checks read from a valid ES384 token of ``claims(tenant="clinic-1", sub="epic-client")``."""
    return {
        "iss": ISS,
        "jti": jti,
        "kid": EC_KID,
        "alg": "ES384",
        "audience": SERVICE_URL,
        "issued_at": NOW,
        "expires_at": NOW + timedelta(seconds=300),
        "tenant": "clinic-1",
        "subject": "epic-client",
    }


def test_valid_es384_token_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    payload = claims(tenant="clinic-1", sub="epic-client")

    client = verifier.verify(sign(keys.ec_key, payload), SERVICE_URL)

    assert client == VerifiedClient(**_es384_client(payload["jti"]))


def test_valid_rs384_token_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    client = verifier.verify(sign(keys.rsa_key, claims(), alg="RS384"), SERVICE_URL)

    assert (client.alg, client.kid) == ("RS384", RSA_KID)


def test_audience_may_be_a_one_element_array(verifier: JwtVerifier, keys: Keys) -> None:
    verifier.verify(sign(keys.ec_key, claims(aud=[SERVICE_URL])), SERVICE_URL)


def test_audience_array_with_other_members_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(aud=[SERVICE_URL, "https://other.example"]))

    assert_rejected(verifier, token, "is not the endpoint called")


def test_feedback_calls_need_the_feedback_url_as_audience(verifier: JwtVerifier, keys: Keys) -> None:
    service_token = sign(keys.ec_key, claims(aud=SERVICE_URL))
    feedback_token = sign(keys.ec_key, claims(aud=FEEDBACK_URL))

    assert_rejected(verifier, service_token, "is not the endpoint called", audience=FEEDBACK_URL)
    assert verifier.verify(feedback_token, FEEDBACK_URL).audience == FEEDBACK_URL


def test_wrong_audience_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(aud="https://cds.example.org/cds-services/other-service"))

    assert_rejected(verifier, token, "is not the endpoint called")


def test_hmac_signed_with_the_public_key_as_secret_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    header = {"alg": "HS384", "typ": "JWT", "kid": EC_KID}
    token = unsigned_token(header, claims(), secret=keys.public_pem())

    assert_rejected(verifier, token, "algorithm 'HS384' is never accepted")


def test_alg_none_is_rejected(verifier: JwtVerifier) -> None:
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": EC_KID}, claims())

    assert_rejected(verifier, token, "algorithm 'none' is never accepted")


def test_algorithm_outside_the_issuers_allowlist_is_rejected(
    make_verifier: Callable[..., JwtVerifier], keys: Keys
) -> None:
    verifier = make_verifier(TrustedIssuer(iss=ISS, jwks=keys.jwks, algorithms=("ES384",)))

    assert_rejected(verifier, sign(keys.rsa_key, claims(), alg="RS384"), "RS384 is not allowed")


def test_key_bound_to_another_algorithm_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.rsa_key, claims(), alg="RS384", kid=EC_KID)

    assert_rejected(verifier, token, "is not a signing key for RS384")


def test_unknown_issuer_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(iss="https://evil.example"))

    assert_rejected(verifier, token, "issuer 'https://evil.example' is not trusted")


def test_unknown_kid_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(), kid="rotated-away"), "no key with kid 'rotated-away'")


def test_missing_kid_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = jwt.encode(claims(), keys.ec_key, algorithm="ES384", headers={"typ": "JWT"})

    assert_rejected(verifier, token, "header has no kid")


def test_typ_other_than_jwt_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(), typ="at+jwt"), "typ 'at\\+jwt' is not JWT")


def test_bad_signature_is_rejected(verifier: JwtVerifier) -> None:
    impostor = ec.generate_private_key(ec.SECP384R1())

    assert_rejected(verifier, sign(impostor, claims()), "signature does not verify")


def test_tampered_payload_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    header, _, signature = sign(keys.ec_key, claims()).split(".")
    forged_payload = _b64(json.dumps(claims(tenant="someone-else")).encode())

    assert_rejected(verifier, f"{header}.{forged_payload}.{signature}", "signature does not verify")


def test_garbage_is_rejected(verifier: JwtVerifier) -> None:
    assert_rejected(verifier, "not-a-jwt", "not a well-formed JWS")


def test_expired_token_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    expired = int(NOW.timestamp()) - 31
    token = sign(keys.ec_key, claims(iat=expired - 300, exp=expired))

    assert_rejected(verifier, token, "expired")


def test_token_expired_within_the_leeway_is_accepted(verifier: JwtVerifier, keys: Keys) -> None:
    issued = int(NOW.timestamp()) - 320
    verifier.verify(sign(keys.ec_key, claims(iat=issued, exp=issued + 300)), SERVICE_URL)


def test_token_not_valid_yet_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(nbf=int(NOW.timestamp()) + 120))

    assert_rejected(verifier, token, "not valid yet")


def test_token_issued_in_the_future_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    issued = int(NOW.timestamp()) + 120
    token = sign(keys.ec_key, claims(iat=issued, exp=issued + 300))

    assert_rejected(verifier, token, "issued in the future")


def test_token_living_longer_than_allowed_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(exp=int(NOW.timestamp()) + 7200))

    assert_rejected(verifier, token, "lifetime")


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_missing_time_claims_are_rejected(verifier: JwtVerifier, keys: Keys, claim: str) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(**{claim: None})), f"claim {claim} is missing")


def test_non_numeric_time_claim_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(exp="tomorrow")), "claim exp is missing or not a")


def test_missing_jti_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(jti=None)), "jti is missing")


def test_replayed_jti_is_rejected(verifier: JwtVerifier, keys: Keys, replay: ReplayCache) -> None:
    token = sign(keys.ec_key, claims(jti="once-only"))
    verifier.verify(token, SERVICE_URL)

    assert_rejected(verifier, token, "jti 'once-only' .* was already used", by_check=False)
    assert replay.calls[0] == (ISS, "once-only", NOW + timedelta(seconds=300 + 30))


def test_replay_cache_is_consulted_only_for_otherwise_valid_tokens(
    verifier: JwtVerifier, keys: Keys, replay: ReplayCache
) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(aud="https://elsewhere")), "not the endpoint")

    assert replay.calls == []


def test_tenant_allowlist(make_verifier: Callable[..., JwtVerifier], keys: Keys) -> None:
    verifier = make_verifier(TrustedIssuer(iss=ISS, jwks=keys.jwks, tenants=frozenset({"clinic-1"})))

    assert verifier.verify(sign(keys.ec_key, claims(tenant="clinic-1")), SERVICE_URL).tenant == "clinic-1"
    assert_rejected(verifier, sign(keys.ec_key, claims(tenant="clinic-2")), "tenant 'clinic-2' is not allowed")
    assert_rejected(verifier, sign(keys.ec_key, claims()), "no tenant claim, and issuer 'https")


def test_unlisted_jku_is_never_fetched(make_verifier: Callable[..., JwtVerifier], keys: Keys) -> None:
    attacker_jku = "https://evil.example/jwks.json"
    fetcher = Fetcher({attacker_jku: keys.jwks, ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher)

    assert_rejected(verifier, sign(keys.ec_key, claims(), jku=attacker_jku), "jku .* is not allowed")
    assert fetcher.calls == []


def test_jku_on_an_issuer_without_a_jku_allowlist_is_rejected(verifier: JwtVerifier, keys: Keys) -> None:
    assert_rejected(verifier, sign(keys.ec_key, claims(), jku=ALLOWED_JKU), "jku .* is not allowed")


def test_allowed_jku_is_fetched_once_and_cached(make_verifier: Callable[..., JwtVerifier], keys: Keys) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher)

    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)
    verifier.verify(sign(keys.rsa_key, claims(), alg="RS384", jku=ALLOWED_JKU), SERVICE_URL)

    assert fetcher.calls == [ALLOWED_JKU]


def test_cached_jwks_is_refetched_after_its_ttl(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: Clock
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher, jwks_ttl_s=600)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)

    clock.now += timedelta(seconds=601)
    now = int(clock.now.timestamp())
    verifier.verify(sign(keys.ec_key, claims(iat=now, exp=now + 300), jku=ALLOWED_JKU), SERVICE_URL)

    assert fetcher.calls == [ALLOWED_JKU, ALLOWED_JKU]


def test_unknown_kid_refetches_the_jwks_at_most_once_a_minute(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: Clock
) -> None:
    rotated_key = ec.generate_private_key(ec.SECP384R1())
    old_jwks = {"keys": [_public_jwk(keys.ec_key, EC_KID, "ES384")]}
    fetcher = Fetcher({ALLOWED_JKU: old_jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)
    fetcher.documents[ALLOWED_JKU] = {"keys": [*old_jwks["keys"], _public_jwk(rotated_key, "ec-key-2", "ES384")]}
    rotated_token = sign(rotated_key, claims(), kid="ec-key-2", jku=ALLOWED_JKU)

    assert_rejected(verifier, rotated_token, "no key with kid 'ec-key-2'")
    assert fetcher.calls == [ALLOWED_JKU]

    clock.now += timedelta(seconds=61)
    now = int(clock.now.timestamp())
    verifier.verify(sign(rotated_key, claims(iat=now, exp=now + 300), kid="ec-key-2", jku=ALLOWED_JKU), SERVICE_URL)
    assert fetcher.calls == [ALLOWED_JKU, ALLOWED_JKU]


def test_a_key_replaced_under_the_same_kid_is_the_new_key(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: Clock
) -> None:
    replacement = ec.generate_private_key(ec.SECP384R1())
    fetcher = Fetcher({ALLOWED_JKU: {"keys": [_public_jwk(keys.ec_key, EC_KID, "ES384")]}})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher, jwks_ttl_s=600)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)
    fetcher.documents[ALLOWED_JKU] = {"keys": [_public_jwk(replacement, EC_KID, "ES384")]}

    clock.now += timedelta(seconds=601)
    now = int(clock.now.timestamp())
    verifier.verify(sign(replacement, claims(iat=now, exp=now + 300), jku=ALLOWED_JKU), SERVICE_URL)
    assert_rejected(
        verifier, sign(keys.ec_key, claims(iat=now, exp=now + 300), jku=ALLOWED_JKU), "signature does not verify"
    )


def test_failing_jwks_fetch_is_an_authentication_error(make_verifier: Callable[..., JwtVerifier], keys: Keys) -> None:
    def unreachable(url: str) -> dict[str, Any]:
        raise OSError(f"cannot connect to {url}")

    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=unreachable)

    assert_rejected(verifier, sign(keys.ec_key, claims(), jku=ALLOWED_JKU), "cannot fetch the JWKS", by_check=False)


def test_configured_jwks_is_used_when_jku_cannot_be_fetched(
    make_verifier: Callable[..., JwtVerifier], keys: Keys
) -> None:
    offline_issuer = TrustedIssuer(iss=ISS, jwks=keys.jwks, jku_allowlist=(ALLOWED_JKU,))
    verifier = make_verifier(offline_issuer)

    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)


def test_check_does_all_but_the_replay_check_which_check_replay_then_does(
    verifier: JwtVerifier, keys: Keys, replay: ReplayCache
) -> None:
    payload = claims(tenant="clinic-1", sub="epic-client")

    checked = verifier.check(sign(keys.ec_key, payload), SERVICE_URL)

    assert checked == CheckedToken(**_es384_client(payload["jti"]))
    assert replay.calls == []
    assert verifier.check_replay(checked) == VerifiedClient(**_es384_client(payload["jti"]))
    assert replay.calls == [(ISS, payload["jti"], NOW + timedelta(seconds=300 + 30))]


def test_check_replay_rejects_a_replayed_jti(verifier: JwtVerifier, keys: Keys) -> None:
    token = sign(keys.ec_key, claims(jti="once-only"))
    first = verifier.check(token, SERVICE_URL)
    assert isinstance(first, CheckedToken)
    verifier.check_replay(first)

    again = verifier.check(token, SERVICE_URL)  # check does not consult the replay cache
    assert again == first
    with pytest.raises(AuthenticationError, match=r"jti 'once-only' .* was already used"):
        verifier.check_replay(again)


def test_check_asks_for_a_fetch_of_a_jku_key_not_cached_and_never_fetches(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, replay: ReplayCache
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher)
    token = sign(keys.ec_key, claims(), jku=ALLOWED_JKU)

    assert verifier.check(token, SERVICE_URL) == KeyFetchNeeded(ALLOWED_JKU)
    assert fetcher.calls == [] and replay.calls == []
    assert verifier.verify(token, SERVICE_URL).kid == EC_KID
    assert fetcher.calls == [ALLOWED_JKU]


def test_check_uses_a_fresh_cached_jku_key_without_fetching(
    make_verifier: Callable[..., JwtVerifier], keys: Keys
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)

    checked = verifier.check(sign(keys.rsa_key, claims(), alg="RS384", jku=ALLOWED_JKU), SERVICE_URL)

    assert isinstance(checked, CheckedToken) and checked.kid == RSA_KID
    assert fetcher.calls == [ALLOWED_JKU]


@pytest.mark.parametrize(
    ("kid", "wait_s"), [(EC_KID, 601), ("ec-key-2", 61)], ids=["ttl passed", "unknown kid, refetch allowed"]
)
def test_check_asks_for_a_fetch_when_the_cached_jwks_is_due_for_refresh(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: Clock, kid: str, wait_s: int
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    verifier = make_verifier(TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,)), fetch_jwks=fetcher, jwks_ttl_s=600)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)

    clock.now += timedelta(seconds=wait_s)
    now = int(clock.now.timestamp())
    token = sign(keys.ec_key, claims(iat=now, exp=now + 300), kid=kid, jku=ALLOWED_JKU)

    assert verifier.check(token, SERVICE_URL) == KeyFetchNeeded(ALLOWED_JKU)
    assert fetcher.calls == [ALLOWED_JKU]


def test_check_uses_a_configured_key_without_fetching_even_with_an_allowed_jku(
    make_verifier: Callable[..., JwtVerifier], keys: Keys
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    issuer = TrustedIssuer(iss=ISS, jwks=keys.jwks, jku_allowlist=(ALLOWED_JKU,))
    verifier = make_verifier(issuer, fetch_jwks=fetcher)

    checked = verifier.check(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)

    assert isinstance(checked, CheckedToken) and checked.kid == EC_KID
    assert fetcher.calls == []


def test_check_does_not_wait_for_a_jwks_fetch_in_progress(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, clock: Clock
) -> None:
    fetcher = Fetcher({ALLOWED_JKU: keys.jwks})
    fetching, release = threading.Event(), threading.Event()

    def refetch_held_until_released(url: str) -> dict[str, Any]:
        if fetcher.calls:
            fetching.set()
            release.wait(timeout=10)
        return fetcher(url)

    issuer = TrustedIssuer(iss=ISS, jku_allowlist=(ALLOWED_JKU,))
    verifier = make_verifier(issuer, fetch_jwks=refetch_held_until_released)
    verifier.verify(sign(keys.ec_key, claims(), jku=ALLOWED_JKU), SERVICE_URL)
    clock.now += timedelta(seconds=61)
    now = int(clock.now.timestamp())
    unknown_kid = sign(keys.ec_key, claims(iat=now, exp=now + 300), kid="ec-key-2", jku=ALLOWED_JKU)
    cached_kid = sign(keys.ec_key, claims(iat=now, exp=now + 300), jku=ALLOWED_JKU)

    with ThreadPoolExecutor(max_workers=1) as pool:
        refetch = pool.submit(verifier.verify, unknown_kid, SERVICE_URL)
        assert fetching.wait(timeout=10)
        try:
            checked = verifier.check(cached_kid, SERVICE_URL)  # would wait for the lock, then find the key
        finally:
            release.set()
        with pytest.raises(AuthenticationError, match="no key with kid 'ec-key-2'"):
            refetch.result(timeout=10)

    assert checked == KeyFetchNeeded(ALLOWED_JKU)


@pytest.mark.parametrize("algorithms", [("HS384",), ("none",), ()])
def test_issuer_config_refuses_symmetric_and_empty_algorithm_lists(keys: Keys, algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        TrustedIssuer(iss=ISS, jwks=keys.jwks, algorithms=algorithms)


def test_issuer_config_needs_a_key_source() -> None:
    with pytest.raises(ValueError, match="JWKS"):
        TrustedIssuer(iss=ISS)


def test_jwks_file_is_loaded_and_checked(tmp_path: Path, keys: Keys) -> None:
    good, bad = tmp_path / "client-jwks.json", tmp_path / "not-jwks.json"
    good.write_text(json.dumps(keys.jwks), encoding="utf-8")
    bad.write_text('{"kty": "EC"}', encoding="utf-8")

    assert load_jwks_file(good) == keys.jwks
    with pytest.raises(ValueError, match="keys"):
        load_jwks_file(bad)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(True, "verified"), (False, "rejected"), (None, "not now")],
)
def test_check_replay_at_once_answers_only_when_the_cache_can_at_once(
    make_verifier: Callable[..., JwtVerifier], keys: Keys, replay: ReplayCache, answer: bool | None, expected: str
) -> None:
    asked: list[tuple[str, str, datetime]] = []

    def at_once(issuer: str, jti: str, keep_until: datetime) -> bool | None:
        asked.append((issuer, jti, keep_until))
        return answer

    verifier = make_verifier(replay_at_once=at_once)
    payload = claims(tenant="clinic-1", sub="epic-client")
    checked = verifier.check(sign(keys.ec_key, payload), SERVICE_URL)
    assert isinstance(checked, CheckedToken)

    if expected == "rejected":
        with pytest.raises(AuthenticationError, match="was already used"):
            verifier.check_replay_at_once(checked)
    else:
        verdict = verifier.check_replay_at_once(checked)
        assert verdict == (VerifiedClient(**_es384_client(payload["jti"])) if expected == "verified" else None)
    assert asked == [(ISS, payload["jti"], NOW + timedelta(seconds=300 + 30))]
    assert replay.calls == []  # the waiting path is the caller's to take, on None


def test_without_an_at_once_cache_check_replay_at_once_is_always_not_now(
    verifier: JwtVerifier, keys: Keys, replay: ReplayCache
) -> None:
    checked = verifier.check(sign(keys.ec_key, claims()), SERVICE_URL)
    assert isinstance(checked, CheckedToken)
    assert verifier.check_replay_at_once(checked) is None
    assert replay.calls == []
