"""`X-Twilio-Signature` checking through the twilio SDK's `RequestValidator` (pure).

Twilio signs the URL it called, so behind a TLS-terminating proxy the URL must be rebuilt from the configured
public base URL (`SWITCHBOARD_PUBLIC_BASE_URL`), never from the Host/scheme this process sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import quote

from twilio.request_validator import RequestValidator


class _Params:
    """Multi-valued form fields in the shape the SDK reads (`getall`), so repeated keys are all signed."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = list(pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._pairs))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def getall(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]


def url_variants(url: str) -> list[str]:
    """The URL as received and as Twilio's other SDKs normalise it (reserved characters such as `'`
    percent-encoded), so signatures from either convention verify."""
    normalised = quote(url, safe=":/?&=+%@#,;$!*()~")
    return [url] if normalised == url else [url, normalised]


def signature_valid(
    auth_token: str, url: str, params: Iterable[tuple[str, str]] | str, signature: str | None
) -> bool:
    """`params`: the form fields as (key, value) pairs, or the raw body of a JSON request (whose URL carries
    `bodySHA256`)."""
    if not signature or not auth_token:
        return False
    validator = RequestValidator(auth_token)
    if isinstance(params, str):
        # An empty JSON body is sent as "{}" by Twilio's own tooling; both spell the same empty document.
        bodies = [params] if params else ["", "{}"]
        candidates: list[str | _Params] = list(bodies)
    else:
        candidates = [_Params(params)]
    return any(validator.validate(u, p, signature) for u in url_variants(url) for p in candidates)
