"""Instagram messaging webhooks: `GET/POST /webhooks/instagram`. The Instagram account id (`entry[].id`)
selects the tenant's channel account. Messenger (`object: page`) bodies use the same envelope and are accepted."""

from __future__ import annotations

from gateways.instagram.parse import OBJECTS, split_by_account
from gateways.meta.webhook import meta_router

CHANNEL = "instagram"
router = meta_router(CHANNEL, OBJECTS, split_by_account)
