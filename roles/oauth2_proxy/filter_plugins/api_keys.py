"""API keys as the host stores them: a name and the SHA-256 of the key, never the key."""

import hashlib
import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def _limits(entry, name):
    """A key's own rate limit (requests per second, burst), if it has one; else the edge's default."""
    limits = {}
    for field in ("rate_limit_rps", "rate_limit_burst"):
        if entry.get(field) is None:
            continue
        value, least = entry[field], (1 if field == "rate_limit_rps" else 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"oauth2_proxy_api_keys[{name}]: {field} must be a whole number of {least} or more, "
                f"not {value!r}"
            )
        limits[field] = value
    return limits


def llmcloud_api_key_entry(entry):
    name = entry.get("name", "")
    if not _NAME.match(str(name)):
        raise ValueError(f"oauth2_proxy_api_keys: name {name!r} must be letters, digits, '.', '_' or '-'")
    return {**_entry(entry, name), **_limits(entry, name)}


def _entry(entry, name):
    if entry.get("key"):
        key = str(entry["key"])
        if not key.startswith("llmc_") or len(key) < 30:
            raise ValueError(
                f"oauth2_proxy_api_keys[{name}]: a key must start with llmc_ and be at least 30 characters; "
                "make one with `llmcloud api-key new NAME`"
            )
        return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest()}
    digest = str(entry.get("sha256", "")).lower()
    if not _HASH.match(digest):
        raise ValueError(f"oauth2_proxy_api_keys[{name}]: give key (llmc_...) or sha256 (64 hex digits)")
    return {"name": name, "sha256": digest}


class FilterModule:
    def filters(self):
        return {"llmcloud_api_key_entry": llmcloud_api_key_entry}
