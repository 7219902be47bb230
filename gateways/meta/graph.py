"""The Graph API client shared by the WhatsApp and Instagram senders: one POST, failures typed."""

from __future__ import annotations

import os
from typing import Any

import httpx

from gateways.common import ProviderError, Transient, classify_http

DEFAULT_BASE = "https://graph.facebook.com/v21.0"


def default_base_url() -> str:
    return os.environ.get("SWITCHBOARD_GRAPH_BASE_URL", DEFAULT_BASE)


def post(base_url: str, path: str, token: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST a JSON body with the tenant's token (a fresh client per call: no tenant state is kept)."""
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(f"{base_url.rstrip('/')}/{path}", json=payload,
                                   headers={"Authorization": f"Bearer {token}"})
    except httpx.TimeoutException as exc:
        raise Transient(f"Graph API timed out: {exc}") from exc
    except httpx.HTTPError as exc:
        raise Transient(f"Graph API unreachable: {exc}") from exc
    if response.status_code >= 400:
        error: ProviderError = classify_http("Graph API", response.status_code, response.text,
                                             response.headers.get("Retry-After"))
        raise error
    return response.json()
