"""`llmcloud usage`: who used how many tokens, from the edge's usage database (WIP, issue 24).

Asks `llmcloud-usage report` on the (first) edge over SSH with the inventory's ssh_config, and shows a table
per principal, model or day with requests, tokens in and out, each one's share of all tokens and, where the
inventory says what the VMs cost (`llmcloud_cost_per_hour`), each one's share of that cost over the period.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from llmcloud.errors import UserError

BY = ("principal", "model", "day")


def since_date(value: str | None, today: dt.date | None = None) -> str | None:
    """`7d`, `30d` or `YYYY-MM-DD` as the first day (UTC) of the report."""
    if not value:
        return None
    today = today or dt.datetime.now(dt.UTC).date()
    days = re.fullmatch(r"(\d{1,4})d", value)
    if days:
        return (today - dt.timedelta(days=int(days.group(1)) - 1)).isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise UserError(
            f"--since {value!r} is not a number of days or a date", "use e.g. 7d, 30d or 2026-11-01"
        ) from None


def fetch(inventory_dir: Path, by: str, since: str | None) -> list[dict[str, Any]]:
    from llmcloud import status

    edge = status.target_edge(inventory_dir)
    ssh_config = inventory_dir / "ssh_config"
    command = ["sudo", "/usr/local/sbin/llmcloud-usage", "report", "--json", "--by", by]
    if since:
        command += ["--since", since]
    run = subprocess.run(
        [
            "ssh",
            *(["-F", str(ssh_config)] if ssh_config.is_file() else []),
            *("-o", "BatchMode=yes", "-o", "ConnectTimeout=15", edge, *command),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        raise UserError(
            f"cannot read the usage on {edge}: {run.stderr.strip()[-300:] or 'ssh failed'}",
            f"check `ssh -F {ssh_config} {edge}`, and that the edge was converged with usage accounting",
        )
    return json.loads(run.stdout or "[]")


def with_cost(
    rows: list[dict[str, Any]], cost_per_hour: float | None, hours: float | None
) -> list[dict[str, Any]]:
    """Each row's share of what the VMs cost over the period: share of tokens, hours, cost per hour."""
    if cost_per_hour is None or hours is None:
        return rows
    return [{**r, "cost": round(r["share"] * cost_per_hour * hours, 2)} for r in rows]


def render(rows: list[dict[str, Any]], by: str) -> str:
    columns = [by, "requests", "failed", "prompt_tokens", "completion_tokens", "share"] + (
        ["cost"] if rows and "cost" in rows[0] else []
    )
    table = [[str(r.get(c, "")) if c != "share" else f"{r['share']:.1%}" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines) if rows else "no usage recorded in this period"


def as_csv(rows: list[dict[str, Any]], by: str) -> str:
    out = io.StringIO()
    fields = [by, "requests", "failed", "prompt_tokens", "completion_tokens", "share"] + (
        ["cost"] if rows and "cost" in rows[0] else []
    )
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
