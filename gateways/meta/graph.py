"""The Graph API client shared by the WhatsApp and Instagram senders: one POST, failures typed."""

from __future__ import annotations

from typing import Any

from gateways.outbound import http_json

BASE_ENV, DEFAULT_BASE = "SWITCHBOARD_GRAPH_BASE_URL", "https://graph.facebook.com/v21.0"


def post(base_url: str, path: str, token: str, payload: dict[str, Any], timeout: float, *,
         guarded: bool = False) -> dict[str, Any]:
    """POST a JSON body with the tenant's token (`guarded`: `base_url` is the tenant's own setting)."""
    return http_json("Graph API", "POST", f"{base_url.rstrip('/')}/{path}", payload, timeout=timeout,
                     headers={"Authorization": f"Bearer {token}"}, guarded=guarded)
