"""Usage quotas (nginx_usage_quotas): checked and put in the form llmcloud-usage reads.

The one home of the rules: the stack config's `quotas:` (llmcloud/config) is checked by this same function at
`pulumi preview`, so an inventory written by hand and a stack config fail the same way, naming the key.
"""

import re

LIMITS = ("tokens_per_day", "tokens_per_30_days", "requests_per_day")
SECTIONS = ("groups", "people", "keys")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class QuotaError(ValueError):
    """Every problem of a quota setting, one line each."""

    def __init__(self, problems):
        self.problems = problems
        super().__init__("; ".join(problems))


def _limits(entry, where, problems):
    if not isinstance(entry, dict):
        problems.append(f"{where} must be a mapping of limits ({', '.join(LIMITS)})")
        return {}
    unknown = sorted(set(entry) - set(LIMITS))
    if unknown:
        problems.append(f"{where}.{unknown[0]} is not a limit; use {', '.join(LIMITS)}")
    found = {}
    for name in LIMITS:
        if name not in entry:
            continue
        value = entry[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(
                f"{where}.{name} must be a whole number of 1 or more, or null for no limit (got {value!r})"
            )
            continue
        found[name] = value
    return found


def check_quotas(value, name="nginx_usage_quotas"):
    """The quotas as llmcloud-usage reads them: {default, groups, people, keys: limits; exempt: [principal]}.

    Raises QuotaError naming each wrong key. People's e-mails are kept in lower case, as the edge names
    people.
    """
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise QuotaError([f"{name} must be a mapping (default, groups, people, keys, exempt)"])
    problems = []
    unknown = sorted(set(value) - {"default", *SECTIONS, "exempt"})
    if unknown:
        problems.append(
            f"{name}.{unknown[0]} is not a quota setting; use default, groups, people, keys or exempt"
        )
    result = {"default": _limits(value.get("default") or {}, f"{name}.default", problems)}
    for section in SECTIONS:
        entries = value.get(section) or {}
        if not isinstance(entries, dict):
            problems.append(f"{name}.{section} must map names to limits")
            continue
        checked = {}
        for key, entry in entries.items():
            key = str(key)
            if section == "people" and not _EMAIL.match(key):
                problems.append(f"{name}.people.{key} is not an e-mail address (people are named by e-mail)")
            if section == "keys" and not _KEY_NAME.match(key):
                problems.append(f"{name}.keys.{key} is not an API key's name (letters, digits, . _ -)")
            checked[key.lower() if section == "people" else key] = _limits(
                entry, f"{name}.{section}.{key}", problems
            )
        result[section] = checked
    exempt = value.get("exempt") or []
    if not isinstance(exempt, list):
        problems.append(f"{name}.exempt must be a list of e-mails and key:<name>")
        exempt = []
    for entry in exempt:
        entry = str(entry)
        if not (_EMAIL.match(entry) or (entry.startswith("key:") and _KEY_NAME.match(entry[4:]))):
            problems.append(f"{name}.exempt: {entry!r} is neither an e-mail nor key:<API key name>")
    result["exempt"] = sorted({e if str(e).startswith("key:") else str(e).lower() for e in exempt})
    if problems:
        raise QuotaError(problems)
    return result


def llmcloud_usage_quotas(value, name="nginx_usage_quotas"):
    from ansible.errors import AnsibleFilterError

    try:
        return check_quotas(value, name)
    except QuotaError as error:
        raise AnsibleFilterError(f"{name}: " + "; ".join(error.problems)) from None


class FilterModule:
    def filters(self):
        return {"llmcloud_usage_quotas": llmcloud_usage_quotas}
