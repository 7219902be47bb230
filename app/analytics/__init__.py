"""Per-tenant analytics computed from the stored rows (messages, conversations, escalations, handoffs, llm_calls),
in SQL aggregates, per UTC day. Definitions: docs/analytics.md."""
