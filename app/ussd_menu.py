"""A tenant's USSD menu (`policies.ussd_menu`): the screens it renders and the walk from a session's accumulated
input (Africa's Talking style `1*2*...`) to the screen to show. Pure functions over the stored policy, which
`app/admin/schemas.py` (`UssdMenu`) validated when it was saved, screen lengths included.

A menu node is `{"text": ..., "options": [...]}`; an option has a `key` and a `label` and exactly one of
`answer` (the `END` screen), `ask: true` (the next input is a free-text question for the orchestrator, after the
option's `prompt`) or `options` (a sub-menu, whose title is its `text`, else the option's label). `0` goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MAX_CHARS = 182  # one USSD screen
BACK = "0"
INVALID = "Invalid option."
ASK_PROMPT = "Type your question:"
# Room a menu screen keeps for "CON " and the invalid-option line, so the screen with the error still fits.
MENU_BODY_MAX = MAX_CHARS - len("CON ") - len(INVALID + "\n")
ANSWER_MAX = MAX_CHARS - len("END ")
ASK_PROMPT_MAX = MAX_CHARS - len("CON ")


def menu_body(node: dict[str, Any], *, is_root: bool) -> str:
    """A menu screen without its `CON ` prefix: the title, one line per option, and `0. Back` below the root."""
    lines = [str(node.get("text") or "")] + [f"{o['key']}. {o['label']}" for o in node["options"]]
    if not is_root:
        lines.append(f"{BACK}. Back")
    return "\n".join(line for line in lines if line)


def _title(option: dict[str, Any]) -> dict[str, Any]:
    """A sub-menu node, its title defaulting to the option's label."""
    return {"text": option.get("text") or option["label"], "options": option["options"]}


@dataclass(frozen=True)
class Screen:
    """What one session step shows: a menu or prompt (`CON`), an answer (`END`), or a question to answer."""

    kind: Literal["menu", "answer", "question"]
    text: str  # the screen without prefix, or the customer's question


def walk(menu: dict[str, Any], inputs: list[str]) -> Screen:
    """The screen after the session's inputs so far. An invalid choice shows the same menu with a short error
    (the aggregator keeps it in the accumulated text, so later inputs continue from that menu)."""
    path: list[dict[str, Any]] = [menu]
    asking: dict[str, Any] | None = None
    invalid = False
    for i, raw in enumerate(inputs):
        entry = raw.strip()
        if asking is not None:
            if entry == BACK:
                asking = None
                continue
            # Everything from here on is the question (it may itself contain `*`).
            question = "*".join(inputs[i:]).strip()
            if question:
                return Screen("question", question)
            continue
        invalid = False
        if entry == BACK:
            if len(path) > 1:
                path.pop()
            continue
        chosen = next((o for o in path[-1]["options"] if o["key"] == entry), None)
        if chosen is None:
            invalid = True
        elif chosen.get("options"):
            path.append(_title(chosen))
        elif chosen.get("ask"):
            asking = chosen
        else:
            return Screen("answer", str(chosen["answer"]))
    if asking is not None:
        return Screen("menu", str(asking.get("prompt") or ASK_PROMPT))
    body = menu_body(path[-1], is_root=len(path) == 1)
    return Screen("menu", f"{INVALID}\n{body}" if invalid else body)
