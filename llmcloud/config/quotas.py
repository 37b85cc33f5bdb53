"""The stack config's `quotas:` and `usage:`: usage accounting at the edge and quotas per principal (role
nginx, `nginx_usage_*`). The rules are the role's own (roles/nginx/filter_plugins/usage_quotas.py): an
inventory written by hand and a stack config are refused the same way, naming the key."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from llmcloud.config.checks import _Model
from llmcloud.contract import role_default, role_plugin


class Limits(_Model):
    """Limits of one principal (tokens: prompt + completion; days in UTC). null: no limit; unset: inherited
    from the next entry (groups, then the default)."""

    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_30_days: int | None = Field(default=None, ge=1)
    requests_per_day: int | None = Field(default=None, ge=1)

    def role_form(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


class Quotas(_Model):
    """Each limit comes from the most specific entry that sets it: the person's or key's, else the most
    generous of the person's groups', else the default."""

    default: Limits = Limits()
    #: Per group (the login's groups claim): the limits of each member.
    groups: dict[str, Limits] = Field(default_factory=dict)
    #: Per person, by e-mail.
    people: dict[str, Limits] = Field(default_factory=dict)
    #: Per API key, by its name.
    keys: dict[str, Limits] = Field(default_factory=dict)
    #: Never refused: e-mails and key:<name>.
    exempt: list[str] = Field(default_factory=list)
    #: Prometheus alerts when a principal has used this fraction of a quota.
    alert_at: float | None = Field(default=None, gt=0, le=1)

    def role_form(self) -> dict[str, Any]:
        form: dict[str, Any] = {"default": self.default.role_form()}
        for section in ("groups", "people", "keys"):
            form[section] = {name: limits.role_form() for name, limits in getattr(self, section).items()}
        form["exempt"] = list(self.exempt)
        return form

    @model_validator(mode="after")
    def _the_roles_rules(self):
        rules = role_plugin("nginx", "usage_quotas")
        try:
            rules.check_quotas(self.role_form(), "quotas")
        except rules.QuotaError as error:
            raise ValueError(
                "; ".join(
                    p.replace("tokens_per_30_days", "tokensPer30Days")
                    .replace("tokens_per_day", "tokensPerDay")
                    .replace("requests_per_day", "requestsPerDay")
                    for p in error.problems
                )
            ) from None
        return self


class Usage(_Model):
    """Usage accounting at the edge (who used how many tokens): `llmcloud usage`."""

    #: Unset: on (role nginx's nginx_usage_enabled); false: no usage log, no quotas.
    enabled: bool | None = None
    #: Record people by a keyed hash of their e-mail (`llmcloud usage --reveal` shows the ones you name).
    pseudonymous: bool | None = None
    #: Days kept; unset: role nginx's nginx_usage_retention_days (13 months).
    retention_days: int | None = Field(default=None, ge=1, le=3650)


#: The default retention, as the role has it (for the README and `llmcloud usage`).
RETENTION_DAYS: int = role_default("nginx", "nginx_usage_retention_days")
