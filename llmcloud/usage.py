"""`llmcloud usage`: who used how many tokens, from the edge's usage database.

Asks `llmcloud-usage report` on the (first) edge over SSH with the inventory's ssh_config, and shows a table
per principal (key:<name>, person:<e-mail>), model, day or group with requests, tokens in and out, each one's
share of all tokens and, where the stack config says what the VMs cost (`costPerHour`, inventory
`llmcloud_cost_per_hour`), each one's share of that cost over the period: share of tokens x hours x cost per
hour.
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

BY = ("principal", "model", "day", "group")
#: The period when none is given.
DEFAULT_SINCE = "30d"


def since_date(value: str | None, today: dt.date | None = None) -> str:
    """`7d`, `30d` or `YYYY-MM-DD` as the first day (UTC) of the report (default: the last 30 days)."""
    today = today or dt.datetime.now(dt.UTC).date()
    value = value or DEFAULT_SINCE
    days = re.fullmatch(r"(\d{1,4})d", value)
    if days and int(days.group(1)) >= 1:
        return (today - dt.timedelta(days=int(days.group(1)) - 1)).isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise UserError(
            f"--since {value!r} is not a number of days or a date", "use e.g. 7d, 30d or 2026-11-01"
        ) from None


def hours_since(first_day: str, now: dt.datetime | None = None) -> float:
    """Hours from the start of ``first_day`` (UTC) until now: the period the VMs cost money for."""
    now = now or dt.datetime.now(dt.UTC)
    start = dt.datetime.combine(dt.date.fromisoformat(first_day), dt.time(), dt.UTC)
    return max(0.0, (now - start).total_seconds() / 3600)


def fetch(
    edge: str, inventory_dir: Path, by: str, since: str, reveal: list[str] | None = None
) -> list[dict[str, Any]]:
    """The report of the edge's llmcloud-usage; ``reveal``: e-mails to show for their pseudonyms (sent on
    stdin, never in a command line)."""
    ssh_config = inventory_dir / "ssh_config"
    command = ["sudo", "/usr/local/sbin/llmcloud-usage", "report", "--json", "--by", by, "--since", since]
    command += ["--reveal"] if reveal else []
    try:
        run = subprocess.run(
            [
                "ssh",
                *(["-F", str(ssh_config)] if ssh_config.is_file() else []),
                *("-o", "BatchMode=yes", "-o", "ConnectTimeout=15", edge, *command),
            ],
            input="\n".join(reveal or []),
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        run = subprocess.CompletedProcess([], 255, "", "timed out after 120 s")
    if run.returncode != 0:
        raise UserError(
            f"cannot read the usage on {edge}: {run.stderr.strip()[-300:] or 'ssh failed'}",
            f"check `ssh -F {ssh_config} {edge}`, and that the edge was converged with usage accounting "
            "(nginx_usage_enabled)",
        )
    try:
        return json.loads(run.stdout or "[]")
    except ValueError:
        raise UserError(f"{edge} answered no usage report", "converge the edge (make converge)") from None


def emails(path: str | None) -> list[str] | None:
    """The e-mails of a file (one per line; '-': stdin) for --reveal."""
    if path is None:
        return None
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise UserError(f"--reveal {path}: {err.strerror}", "name a file with one e-mail per line") from None
    found = [line.strip() for line in text.splitlines() if "@" in line]
    if not found:
        raise UserError(f"--reveal {path}: no e-mail address in it", "one e-mail per line")
    return found


def report(
    inventory_dir: Path, by: str, since: str | None, reveal: str | None = None
) -> list[dict[str, Any]]:
    """The usage rows of the period, with each one's cost share where the VMs' cost is known."""
    from llmcloud import status

    hostvars, edges = status.read_inventory(inventory_dir)
    first = since_date(since)
    rows = fetch(edges[0], inventory_dir, by, first, emails(reveal))
    return with_cost(rows, status.cost_per_hour(hostvars), hours_since(first))


def with_cost(
    rows: list[dict[str, Any]], cost_per_hour: float | None, hours: float | None
) -> list[dict[str, Any]]:
    """Each row's share of what the VMs cost over the period: share of tokens x hours x cost per hour."""
    if cost_per_hour is None or hours is None:
        return rows
    return [{**r, "cost": round(r["share"] * cost_per_hour * hours, 2)} for r in rows]


def _columns(rows: list[dict[str, Any]], by: str) -> list[str]:
    return [by, "requests", "failed", "prompt_tokens", "completion_tokens", "share"] + (
        ["cost"] if rows and "cost" in rows[0] else []
    )


def render(rows: list[dict[str, Any]], by: str) -> str:
    columns = _columns(rows, by)
    table = [[str(r.get(c, "")) if c != "share" else f"{r['share']:.1%}" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in table]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines) if rows else "no usage recorded in this period"


def as_csv(rows: list[dict[str, Any]], by: str) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows, by), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
