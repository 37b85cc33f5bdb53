"""Rate-limit classes of the edge: one nginx zone per distinct (rate, burst), keys mapped to theirs."""


def llmcloud_rate_classes(keys, default_rps, default_burst):
    """Stored API keys ({name, sha256, rate_limit_rps?, rate_limit_burst?}) -> classes and the keys' classes.

    Class 0 is the default limit of every credential; a key with a limit of its own gets the class of that
    (rate, burst), shared with other keys of the same limit. Each credential is counted on its own.
    """
    classes = [{"rps": int(default_rps), "burst": int(default_burst)}]
    by_key = {}
    for entry in keys or []:
        if entry.get("rate_limit_rps") is None and entry.get("rate_limit_burst") is None:
            continue
        burst = entry.get("rate_limit_burst")
        limit = {
            "rps": int(entry.get("rate_limit_rps") or default_rps),
            "burst": int(default_burst if burst is None else burst),
        }
        if limit not in classes:
            classes.append(limit)
        by_key[entry["name"]] = classes.index(limit)
    return {"classes": classes, "keys": by_key}


class FilterModule:
    def filters(self):
        return {"llmcloud_rate_classes": llmcloud_rate_classes}
