"""`llmcloud usage`: periods, the table, the CSV and the cost share, without a stack."""

from __future__ import annotations

import datetime as dt

import pytest

from llmcloud import usage
from llmcloud.errors import UserError

ROWS = [
    {
        "principal": "key:ci",
        "requests": 3,
        "failed": 1,
        "prompt_tokens": 9,
        "completion_tokens": 15,
        "share": 0.6,
    },
    {
        "principal": "person:a@x.org",
        "requests": 2,
        "failed": 0,
        "prompt_tokens": 6,
        "completion_tokens": 10,
        "share": 0.4,
    },
]


def test_periods_are_days_or_a_date_and_anything_else_names_the_flag():
    today = dt.date(2026, 12, 2)
    assert usage.since_date("7d", today) == "2026-11-26"
    assert usage.since_date("1d", today) == "2026-12-02"
    assert usage.since_date("2026-11-01", today) == "2026-11-01"
    assert usage.since_date(None, today) == "2026-11-03"  # the last 30 days
    for wrong in ("last week", "0d"):
        with pytest.raises(UserError, match="--since"):
            usage.since_date(wrong, today)
    noon = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    assert usage.hours_since("2026-12-01", noon) == 36


def test_table_csv_and_cost_share():
    table = usage.render(ROWS, "principal")
    assert table.splitlines()[1].split() == ["key:ci", "3", "1", "9", "15", "60.0%"]
    assert usage.render([], "model") == "no usage recorded in this period"
    costed = usage.with_cost(ROWS, 2.0, 24)
    assert [r["cost"] for r in costed] == [28.8, 19.2]
    assert usage.as_csv(costed, "principal").splitlines()[0].endswith(",share,cost")
