"""SMART launch sessions in the shared store: each under the hash of its id, its content sealed with AES-256-GCM."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.concurrency import run_in_threadpool

from spasticity_cds.store import FeedbackStore, SealedSmartSession, SmartSessionStage, hash_session_id

logger = logging.getLogger(__name__)

#: The first byte of every sealed session: the format (cipher, key derivation, plaintext) it was sealed in.
SEAL_FORMAT = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
#: HKDF's salt and the start of its info: they make the key this one use's own (the same secret signs cookies).
HKDF_SALT = b"spasticity-cds/smart-session"
HKDF_INFO = b"aes-256-gcm key v1:"
#: Ids are ``secrets.token_urlsafe(32)``, 43 characters; anything much longer in a URL is no id of ours.
MAX_ID_CHARS = 64


@dataclass
class SmartSession:
    """One launch: the PKCE verifier before the callback, then the token and patient context; bound to one browser.

    The client registration is not kept (its secret stays in the configuration): it is looked up again by ``iss``.
    """

    iss: str
    client_id: str
    browser: str
    verifier: str = ""
    token_endpoint: str = ""
    #: The ``iss`` a callback may carry (RFC 9207): the configuration's ``issuer``, or the FHIR base.
    issuers: frozenset[str] = frozenset()
    access_token: str = ""
    patient: str = ""
    #: From the EHR's ``appContext`` (a CDS Hooks card's link): the card and the rule the page highlights.
    card_uuid: str | None = None
    rule_id: str | None = None

    def to_json(self) -> bytes:
        """The session as JSON, for sealing."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["issuers"] = sorted(self.issuers)
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> SmartSession | None:
        """The session `to_json` wrote, or None if the JSON is not of that shape (the seal authenticated it: only
        this app wrote it, so a shape that differs is a format this version does not know)."""
        try:
            fields: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(fields, dict) or set(fields) != set(cls.__dataclass_fields__):
            return None
        if not isinstance(fields["issuers"], list):
            return None
        return cls(**(fields | {"issuers": frozenset(fields["issuers"])}))


class SessionSealer:
    """AES-256-GCM with a key of each session's own, derived by HKDF-SHA256 from the app's secret and the session id.

    The raw secret (which also signs the cookies) is never the key. With the id in the derivation, a copy of the
    database and of the configuration together still opens no session: the ids are stored only as hashes. The
    stage and the end of the session are authenticated data, so a row moved from one stage (or session) to
    another, or given a later ``expires_at`` in the database, does not open.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _cipher(self, session_id: str) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=HKDF_INFO + session_id.encode())
        return AESGCM(hkdf.derive(self._secret))

    def seal(self, session_id: str, stage: SmartSessionStage, expires_at: datetime, plaintext: bytes) -> bytes:
        """Format byte, random 96-bit nonce, then the ciphertext with its tag."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return SEAL_FORMAT + nonce + self._cipher(session_id).encrypt(nonce, plaintext, _bound(stage, expires_at))

    def open(self, session_id: str, stage: SmartSessionStage, expires_at: datetime, sealed: bytes) -> bytes | None:
        """The plaintext, or None if ``sealed`` was not sealed for this session, stage and end under this secret."""
        if not sealed.startswith(SEAL_FORMAT) or len(sealed) < len(SEAL_FORMAT) + NONCE_BYTES + TAG_BYTES:
            return None
        nonce = sealed[len(SEAL_FORMAT) : len(SEAL_FORMAT) + NONCE_BYTES]
        try:
            return self._cipher(session_id).decrypt(
                nonce, sealed[len(SEAL_FORMAT) + NONCE_BYTES :], _bound(stage, expires_at)
            )
        except InvalidTag:
            return None


def _bound(stage: SmartSessionStage, expires_at: datetime) -> bytes:
    """The authenticated data: the stage and the session's end, in UTC to the microsecond (as both stores keep it)."""
    return f"{stage.value} {expires_at.astimezone(UTC).isoformat(timespec='microseconds')}".encode()


class SmartSessions:
    """The SMART sessions of every worker and host, in the shared store: any of them continues a launch.

    Store calls run in a thread (the event loop never waits on the database); a store failure is a `StoreError`
    for the route to show, never a session lost or given to another browser.
    """

    def __init__(self, store: FeedbackStore, secret: bytes, *, max_age_s: int, max_pending: int) -> None:
        self._store = store
        self._sealer = SessionSealer(secret)
        self._max_age = timedelta(seconds=max_age_s)
        self._max_pending = max_pending

    async def start(self, session: SmartSession) -> str:
        """Keep a pending launch (``session_max_age_s``); its new random id is the OAuth state. Beyond
        ``max_pending`` pending launches the oldest go (a logged-in session never does)."""
        return await self._add(session, SmartSessionStage.PENDING, self._max_age)

    async def take_pending(self, state: str) -> SmartSession | None:
        """The pending launch named by ``state``, removed whatever happens next: a state is good for one callback,
        in whichever worker or host it lands."""
        return await self._looked_up(state, self._store.take_pending_smart_session)

    async def log_in(self, session: SmartSession, lifetime: timedelta) -> str:
        """Keep the logged-in session for ``lifetime`` (the token's, at most ``session_max_age_s``) under a new id."""
        return await self._add(session, SmartSessionStage.ACTIVE, min(lifetime, self._max_age))

    async def find_active(self, session_id: str) -> SmartSession | None:
        """The logged-in session named in a plan's URL, while it lasts."""
        return await self._looked_up(session_id, self._store.find_active_smart_session)

    async def _looked_up(
        self, session_id: str, look_up: Callable[[str], SealedSmartSession | None]
    ) -> SmartSession | None:
        """The session ``look_up`` finds by the hash of ``session_id``, opened; None for no id of ours."""
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return None
        sealed = await run_in_threadpool(look_up, hash_session_id(session_id))
        return self._opened(session_id, sealed)

    async def _add(self, session: SmartSession, stage: SmartSessionStage, lifetime: timedelta) -> str:
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires_at = now + lifetime
        record = SealedSmartSession(
            key_hash=hash_session_id(session_id),
            stage=stage,
            sealed=self._sealer.seal(session_id, stage, expires_at, session.to_json()),
            created_at=now,
            expires_at=expires_at,
        )
        await run_in_threadpool(partial(self._store.add_smart_session, record, max_pending=self._max_pending))
        return session_id

    def _opened(self, session_id: str, sealed: SealedSmartSession | None) -> SmartSession | None:
        if sealed is None:
            return None
        plaintext = self._sealer.open(session_id, sealed.stage, sealed.expires_at, sealed.sealed)
        session = SmartSession.from_json(plaintext) if plaintext is not None else None
        if session is None:
            # Sealed under another secret (workers or hosts without one shared session_secret), or altered.
            logger.warning("a stored SMART session could not be opened (is session_secret the same everywhere?)")
        return session
