"""Opaque pagination tokens for ListVolumes and ListSnapshots (pure, no I/O).

CSI: a `starting_token` the plugin did not give out is ABORTED, and the caller restarts the
listing. A token here is the position (the last id of the page before) and the listing it
belongs to (`scope`: which RPC, and for snapshots the source volume filter), sealed with an
HMAC under a key drawn when the adapter starts. So a token is accepted only by the adapter
process that issued it, for the listing it was issued for: an id typed in by hand, a token
from another listing or from a restarted adapter is refused, never paged from. (A restart
or a controller failover therefore makes a CO restart a listing it was paging through,
which the spec's ABORTED recovery is for.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from berth_shared.errors import Aborted

_MAC_BYTES = 16
_MAX_TOKEN = 512


class PageTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _mac(self, scope: str, position: str) -> bytes:
        msg = f"{scope}\x00{position}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, scope: str, position: str | None) -> str:
        """The token for the page after `position` ("" when the listing is complete)."""
        if not position:
            return ""
        raw = position.encode() + self._mac(scope, position)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def position(self, scope: str, token: str, field: str = "starting_token") -> str | None:
        """The position a token of this listing stands for; None for an empty token;
        ABORTED for anything this adapter did not issue for this listing."""
        if not token:
            return None
        refused = Aborted(
            f"{field} {token[:80]!r} is not a token this plugin gave out for this listing; "
            "restart the listing without one",
            reason="invalid_token",
        )
        if len(token) > _MAX_TOKEN:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        try:
            position = body.decode()
        except UnicodeDecodeError:
            raise refused from None
        if not position or not hmac.compare_digest(mac, self._mac(scope, position)):
            raise refused
        return position
