"""What the stack config's parts share: checks of URLs, e-mails, files and regexes, and the base model."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic.alias_generators import to_camel

_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})+$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_HF_MODEL = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_OLLAMA_MODEL = re.compile(r"^[a-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def _local_file(value: str, fix: str) -> Path:
    """A file on this machine (where `pulumi up` runs), ~ expanded, as an absolute path."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"{value!r} is not a file on this machine; fix: {fix}")
    return path.resolve()


def _check_url(
    value: str, schemes: tuple[str, ...], example: str, path: bool = False, show: bool = True
) -> str:
    """An absolute URL of one of ``schemes`` with a real host name or address (what a typo breaks first).

    ``show``: whether the message may repeat the value (not for secrets, whose URLs often carry a token)."""
    shown = repr(value) if show else "the value"
    fix = f"; fix: e.g. {example}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in schemes or not value.startswith(f"{parts.scheme}://"):
        raise ValueError(f"{shown} is not a {' or '.join(s + '://' for s in schemes)} URL{fix}")
    if re.search(r"\s", value):
        raise ValueError(f"{shown} contains white space{fix}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown} has a port that is not a number from 1 to 65535{fix}") from None
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$", host):
            raise ValueError(f"{shown} has no valid host name{fix}") from None
    if port == 0:
        raise ValueError(f"{shown} has port 0{fix}")
    if path and parts.path in ("", "/"):
        raise ValueError(f"{shown} names no file (the URL has no path){fix}")
    return value


def _check_emails(values: list[str]) -> list[str]:
    for value in values:
        if not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an e-mail address; fix: e.g. alice@example.org")
    return values


def _local(info: ValidationInfo) -> bool:
    """Validating a local stack's settings (llmcloud local), not a cloud stack's."""
    return bool(info.context and info.context.get("local"))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
        validate_default=True,
    )


def _check_regex(value: str | None, what: str) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"{what} is not a valid regular expression ({exc}); fix: e.g. ^Ubuntu-24\\.04-.*-gpu$"
            ) from None
    return value
