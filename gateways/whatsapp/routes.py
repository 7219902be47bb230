"""WhatsApp Cloud API webhooks: `GET/POST /webhooks/whatsapp` (one URL per Meta app; the phone number id in
each change selects the tenant's channel account)."""

from __future__ import annotations

from gateways.meta.webhook import meta_router
from gateways.whatsapp.parse import split_by_account

CHANNEL = "whatsapp"
router = meta_router(CHANNEL, {"whatsapp_business_account"}, split_by_account)
