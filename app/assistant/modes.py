"""How much the bot does on its own, per tenant with per-channel overrides (`policies.mode`,
`policies.channel_modes`):

- `auto`: answers go out when grounded (escalations only for what the checks hold back);
- `draft`: every answer waits for an agent's approval: an escalation `draft_review` with the answer as its draft
  (the customer is told nothing meanwhile unless `policies.draft_notice` is true);
- `human`: the bot only acknowledges and routes: a short acknowledgement and an escalation `human_mode`, with no
  retrieval and no LLM call.
"""

from __future__ import annotations

from typing import Any

MODES = ("auto", "draft", "human")
DEFAULT_MODE = "auto"


def effective_mode(policies: dict[str, Any], channel: str) -> str:
    """The channel's override, else the tenant's mode, else `auto`. An unknown value (written around the admin
    API's validation) counts as the safest mode that still answers: `draft`."""
    mode = (policies.get("channel_modes") or {}).get(channel) or policies.get("mode") or DEFAULT_MODE
    return mode if mode in MODES else "draft"
