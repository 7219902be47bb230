"""Every analytics figure of a three-day scenario played through the real pipeline (tests/analytics/scenario.py)
equals the same figure recomputed from the raw rows in plain Python (tests/analytics/recompute.py), per day and
over the range, in the JSON and in the CSV; the other tenant sees none of it. SQLite and Postgres."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest

from tests.analytics import recompute
from tests.analytics.scenario import DAY1, DAY3, Played, embedded

SINCE, UNTIL = DAY1 - timedelta(days=1), DAY3 + timedelta(days=1)  # a quiet day at each end
DAYS = [SINCE + timedelta(days=i) for i in range((UNTIL - SINCE).days + 1)]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    yield from embedded(request.param, request, tmp_path_factory)


def _get(p: Played, headers: dict[str, str], path: str = "", **params: Any) -> Any:
    r = p.client.get(f"/admin/v1/analytics{path}", headers=headers,
                     params={"since": SINCE.isoformat(), "until": UNTIL.isoformat(), **params})
    assert r.status_code == 200, r.text
    return r


def _same(actual: Any, wanted: Any, where: str) -> None:
    if isinstance(wanted, dict):
        assert set(actual) >= set(wanted), (where, actual, wanted)
        for key, value in wanted.items():
            _same(actual[key], value, f"{where}.{key}")
    elif isinstance(wanted, list):
        assert len(actual) == len(wanted), (where, actual, wanted)
        for i, (a, w) in enumerate(zip(actual, wanted, strict=True)):
            _same(a, w, f"{where}[{i}]")
    elif isinstance(wanted, float):
        assert actual == pytest.approx(wanted, abs=0.01, rel=1e-6), (where, actual, wanted)
    else:
        assert actual == wanted, (where, actual, wanted)


def test_every_figure_equals_its_recomputation_from_the_rows(scenario: Played) -> None:
    body = _get(scenario, scenario.a.headers()).json()
    wanted = recompute.expected(scenario.a.id, DAYS)
    assert [d["day"] for d in body["days"]] == [d.isoformat() for d in DAYS]
    for day in body["days"]:
        _same(day, wanted[date.fromisoformat(day["day"])], day["day"])
    _same(body["total"], recompute.total(wanted), "total")

    # The scenario is what it claims to be (a comparison of empty figures would prove nothing).
    total = body["total"]
    assert body["days"][0]["messages_in"] == body["days"][-1]["messages_in"] == 0
    assert total["messages_in"] == 10 and total["messages_out_agent"] == 4
    assert total["inbound_by_status"]["answered"] >= 3 and total["inbound_by_status"]["escalated"] >= 3
    assert total["inbound_by_status"]["human"] == 1
    assert len(total["escalations_by_reason"]) >= 3, total["escalations_by_reason"]
    assert total["decisions"] == {"approve": 1, "edit": 1, "reject": 1, "takeover": 1}
    assert 0 < total["deflection"] < 1
    # A conversation answered once, then handed to a person: deflected as a message, not as a conversation.
    assert total["conversations_started"] == 8 and total["conversations_with_outcome"] == 8
    assert 0 < total["conversation_deflection"] < total["deflection"]
    assert {m["model"] for m in total["llm_by_model"]} == {"big-model", "small-model"}
    assert sum(m["failed"] for m in total["llm_by_model"]) >= 2  # the day the LLM was down: both models tried
    assert total["llm_cost"] > 0 and total["llm_prompt_tokens"] > 0
    # The handoffs last what the scenario planned (the clock ticks on while the test works: a minute of slack).
    handled = total["agent_handling"]
    assert handled["count"] == 2
    assert handled["total_s"] == pytest.approx(sum(scenario.handled.values()), abs=60)
    assert handled["max_s"] == pytest.approx(scenario.handled["escalation_takeover"], abs=60)
    # Resolved by a person: the edit, the rejection, the approval, the takeover released; one stays open.
    assert total["human_resolution"]["count"] == 4 and total["human_first_response"]["count"] == 3
    assert total["bot_first_response"]["count"] >= total["bot_resolution"]["count"] >= 3


def test_csv_has_one_row_per_day_with_the_json_figures(scenario: Played) -> None:
    r = _get(scenario, scenario.a.headers("agent"), "/export.csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    body = _get(scenario, scenario.a.headers()).json()
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["day"] for row in table] == [d["day"] for d in body["days"]]
    reasons = sorted(body["total"]["escalations_by_reason"])
    assert [c.removeprefix("escalations:") for c in table[0] if c.startswith("escalations:")] == reasons
    for row, day in zip(table, body["days"], strict=True):
        for key in ("conversations_started", "conversations_active", "messages_in", "messages_out",
                    "messages_out_bot", "messages_out_agent", "escalations"):
            assert int(row[key]) == day[key], (key, row, day)
        assert int(row["answered"]) == day["inbound_by_status"].get("answered", 0)
        assert int(row["routed_to_agent"]) == day["inbound_by_status"].get("human", 0)
        for reason in reasons:
            assert int(row[f"escalations:{reason}"]) == day["escalations_by_reason"].get(reason, 0)
        for rate in ("deflection", "conversation_deflection"):
            assert (row[rate] == "") == (day[rate] is None)
            if day[rate] is not None:
                assert float(row[rate]) == pytest.approx(day[rate], abs=1e-4)
        assert int(row["conversations_bot_only"]) == day["conversations_bot_only"]
        assert int(row["conversations_with_outcome"]) == day["conversations_with_outcome"]
        for name in ("bot_first_response", "bot_resolution", "human_first_response", "human_resolution",
                     "agent_handling"):
            assert int(row[f"{name}_count"]) == day[name]["count"]
            if day[name]["avg_s"] is None:
                assert row[f"{name}_avg_s"] == ""
            else:
                assert float(row[f"{name}_avg_s"]) == pytest.approx(day[name]["avg_s"], abs=1e-3)
        assert int(row["llm_prompt_tokens"]) == day["llm_prompt_tokens"]
        assert float(row["llm_cost"]) == pytest.approx(day["llm_cost"], abs=1e-6)
        for usage in day["llm_by_model"]:
            key = f"{usage['provider']}/{usage['model']}"
            assert int(row[f"llm_prompt_tokens:{key}"]) == usage["prompt_tokens"]
            assert int(row[f"llm_completion_tokens:{key}"]) == usage["completion_tokens"]


def test_the_other_tenant_sees_only_its_own_figures(scenario: Played) -> None:
    mine = _get(scenario, scenario.b.headers()).json()
    wanted = recompute.expected(scenario.b.id, DAYS)
    for day in mine["days"]:
        _same(day, wanted[date.fromisoformat(day["day"])], day["day"])
    total = mine["total"]
    assert total["messages_in"] == 1 and total["llm_by_model"] == [] and total["agent_handling"]["count"] == 0
    assert list(total["escalations_by_reason"]) == ["human_requested"]
    # Naming the other tenant in the request changes nothing: the tenant is the credentials'.
    crossed = _get(scenario, scenario.b.headers(), tenant_id=scenario.a.id, tenant=scenario.a.slug).json()
    assert crossed == mine
    a_csv = _get(scenario, scenario.a.headers(), "/export.csv").text
    b_csv = _get(scenario, scenario.b.headers(), "/export.csv", tenant_id=scenario.a.id).text
    assert "big-model" in a_csv and "big-model" not in b_csv
