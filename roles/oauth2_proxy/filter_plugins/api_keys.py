"""API keys as the host stores them: a name and the SHA-256 of the key, never the key."""

import hashlib
import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def llmcloud_api_key_entry(entry):
    name = entry.get("name", "")
    if not _NAME.match(str(name)):
        raise ValueError(f"oauth2_proxy_api_keys: name {name!r} must be letters, digits, '.', '_' or '-'")
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
