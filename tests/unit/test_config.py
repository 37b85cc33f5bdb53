"""The stack schema: good stacks parse, and every bad setting is refused with its key named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from llmcloud import REPO_ROOT, contract
from llmcloud.config import ConfigError, StackConfig, parse

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk3sT2nqYw2ygq2aBQ7KJ5Jc8LkQn3d9bVhW8n5Yx1k alice@laptop"
BASE = {
    "adminCidrs": ["192.0.2.0/24"],
    "domain": "llm.example.org",
    "sshPublicKey": KEY,
    "reach": {"floatingIpPool": "public"},
    "auth": {"provider": "lifescience", "clientId": "abc", "allowedEmailDomains": ["example.org"]},
    "chatUi": {"admin": "admin@example.org"},
    "tls": {"acmeEmail": "admin@example.org"},
    "oauthClientSecret": "s3cret",
}


def with_(**changes) -> dict:
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        path = dotted.split("__")
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return raw


DELETE = object()


def test_minimal_stack_gets_denbi_defaults():
    cfg = parse(BASE)
    assert cfg.topology == "single"
    assert cfg.engine_node.flavor == "de.NBI GPU T4 medium"
    assert cfg.engine_node.image_pattern == r"^Ubuntu-24\.04-.*-gpu$"
    assert cfg.engine.kind == "tgi"
    # The login's default (LifeScience AAI, its issuer) is role oauth2_proxy's: the inventory leaves it out.
    assert cfg.auth.provider == "lifescience" and cfg.auth.issuer_url is None
    assert cfg.allow_data_loss is False
    assert cfg.configure is True


def test_secrets_are_never_shown():
    cfg = parse(BASE)
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg.model_dump())
    assert cfg.oauth_client_secret.get_secret_value() == "s3cret"


def test_structured_values_arrive_as_json_from_pulumi():
    raw = with_(reach='{"jumpHost": "alice@jump.example.org"}', topology="split", replicas=2)
    cfg = parse(raw)
    assert cfg.reach.jump_host == "alice@jump.example.org"
    assert cfg.replicas == 2


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "stacks").glob("Pulumi.*.yaml")), ids=lambda p: p.name)
def test_example_stacks_are_valid(path: Path):
    doc = yaml.safe_load(path.read_text())["config"]
    raw = {}
    for key, value in doc.items():
        assert key.startswith("llmcloud:") or key.startswith("openstack:"), key
        if key.startswith("llmcloud:"):
            raw[key.split(":", 1)[1]] = value
    # Secrets are set with `pulumi config set --secret`, never in the file: stand in for them here.
    raw.setdefault("oauthClientSecret", "placeholder")
    raw.setdefault("resticPassword", "placeholder")
    parse(raw, secret_keys={"oauthClientSecret", "resticPassword"})


BAD = [
    # (changes, key named in the error)
    ({"adminCidrs": []}, "llmcloud:adminCidrs"),
    ({"adminCidrs": ["10.0.0.300/24"]}, "llmcloud:adminCidrs"),
    ({"adminCidrs": ["10.0.0.1"]}, "llmcloud:adminCidrs"),
    ({"adminCidrs": ["0.0.0.0/0"]}, "allowSshFromWorld"),
    ({"adminCidrs": ["::/0"]}, "allowSshFromWorld"),
    ({"engineNode": {"flavor": ""}}, "llmcloud:engineNode.flavor"),
    ({"engineNode": {"image": "Ubuntu-24.04", "imagePattern": "^U"}}, "llmcloud:engineNode"),  # both set
    ({"engineNode": {"imagePattern": "Ubuntu-(24"}}, "llmcloud:engineNode.imagePattern"),
    ({"edgeNode": {"image": None, "imagePattern": None}}, "llmcloud:edgeNode"),
    ({"engineNode": {"dataVolumeSize": 5}}, "llmcloud:engineNode.dataVolumeSize"),
    ({"engineNode": {"bootVolumeSize": 5000}}, "llmcloud:engineNode.bootVolumeSize"),
    ({"engineNode": {"costPerHour": -1}}, "llmcloud:engineNode.costPerHour"),
    ({"monitoring": {"admins": ["a@example.org"], "adminGroups": ["ops"]}}, "llmcloud:monitoring"),
    ({"monitoring": {"admins": ["not-an-email"]}}, "llmcloud:monitoring.admins"),
    ({"monitoring": {"alertEmail": "ops@example.org"}}, "alertSmarthost"),
    ({"monitoring": {"retentionDays": 0}}, "llmcloud:monitoring.retentionDays"),
    ({"replicas": 0}, "llmcloud:replicas"),
    ({"replicas": 3}, "topology split"),
    ({"topology": "triple"}, "llmcloud:topology"),
    ({"domain": "not a domain"}, "llmcloud:domain"),
    ({"domain": "LLM.Example.org"}, "llmcloud:domain"),
    ({"tls": {"acmeEmail": "admin-at-example.org"}}, "llmcloud:tls.acmeEmail"),
    ({"tls": {"mode": "acme_dns01", "acmeEmail": None}}, "llmcloud:tls"),
    ({"tls": {"mode": "external"}}, "trustedProxies"),
    ({"tls": {"mode": "external", "trustedProxies": ["lb"]}}, "llmcloud:tls.trustedProxies"),
    ({"engine": {"kind": "llamacpp"}}, "llmcloud:engine.kind"),
    ({"engine": {"kind": "tgi", "modelId": "just-a-name"}}, "llmcloud:engine"),
    ({"engine": {"kind": "ollama", "modelId": "Qwen/Qwen 2"}}, "llmcloud:engine"),
    ({"engine": {"maxInputTokens": 4096, "maxTotalTokens": 2048}}, "maxInputTokens"),
    ({"models": [{"kind": "tei"}]}, "llmcloud:models.0.modelId: is required"),
    ({"engine": {"modelSource": {}}}, "exactly one of file, url and hostPath"),
    ({"engine": {"modelSource": {"url": "https://x.org/m.tgz", "hostPath": "/m"}}}, "exactly one of file"),
    ({"engine": {"modelSource": {"file": "/no/such/model.tar.gz"}}}, "llmcloud:engine.modelSource.file"),
    ({"engine": {"modelSource": {"url": "ftp://x.org/m.tgz"}}}, "llmcloud:engine.modelSource.url"),
    ({"engine": {"modelSource": {"hostPath": "srv/m"}}}, "llmcloud:engine.modelSource.hostPath"),
    ({"engine": {"modelSource": {"hostPath": "/m", "sha256": "abc"}}}, "llmcloud:engine.modelSource.sha256"),
    ({"models": [{"kind": "tei", "modelId": "no-org"}]}, "llmcloud:models.0"),
    ({"models": [{"modelId": "Qwen/Qwen2.5-1.5B-Instruct"}]}, "served twice"),
    ({"models": [{"modelId": "a/b"}, {"kind": "tei", "modelId": "a/b"}]}, "a/b served twice"),
    ({"models": [{"modelId": f"a/m{i}"} for i in range(9)]}, "llmcloud:models"),
    ({"auth": {"provider": "keycloak", "clientId": "x"}}, "llmcloud:auth.provider"),
    ({"auth": {"provider": "oidc", "clientId": "x", "allowedEmailDomains": ["*"]}}, "issuerUrl"),
    (
        {"auth": {"provider": "oidc", "clientId": "x", "issuerUrl": "http://kc/realms/a"}},
        "llmcloud:auth.issuerUrl",
    ),
    ({"auth": {"provider": "github", "clientId": "x"}}, "githubOrg"),
    ({"auth": {"provider": "lifescience", "clientId": None}}, "clientId"),
    ({"auth": {"provider": "lifescience", "allowedEmailDomains": []}}, "nobody is allowed in"),
    ({"auth": {"clientId": "x", "allowedEmails": ["bob"]}}, "llmcloud:auth.allowedEmails"),
    (
        {"auth": {"clientId": "x", "allowedEmailDomains": ["exa mple.org"]}},
        "llmcloud:auth.allowedEmailDomains",
    ),
    ({"backup": {"target": "s3"}}, "llmcloud:backup.target"),
    ({"backup": {"target": "manila"}}, "resticPassword"),
    ({"backup": {"target": "swift", "keepDaily": 0, "keepWeekly": 0, "keepMonthly": 0}}, "llmcloud:backup"),
    ({"backup": {"size": 0}}, "llmcloud:backup.size"),
    ({"reach": {"floatingIpPool": None}}, "floatingIpPool"),
    ({"reach": {"jumpHost": "jump.example.org"}}, "llmcloud:reach.jumpHost"),
    ({"network": {"cidr": "10.42.0.0/33"}}, "llmcloud:network.cidr"),
    ({"network": {"cidr": "8.8.8.0/24"}}, "llmcloud:network.cidr"),
    ({"network": {"dnsNameservers": ["dns.example.org"]}}, "llmcloud:network.dnsNameservers"),
    ({"network": {"externalNetwork": None}}, "externalNetwork"),
    ({"sshPublicKey": "not-a-key"}, "llmcloud:sshPublicKey"),
    ({"keypairName": "mine"}, "exactly one of sshPublicKey"),
    ({"namePrefix": "LLM_"}, "llmcloud:namePrefix"),
    ({"oauthClientSecret": DELETE}, "oauthClientSecret"),
    ({"cookieSecret": "short"}, "cookieSecret"),
    ({"domian": "llm.example.org"}, "llmcloud:domian: is not a known setting"),
    ({"domain": DELETE}, "llmcloud:domain: is required"),
    ({"chatUi": DELETE}, "chatUi needs an admin: set chatUi.admin"),
    ({"chatUi": {"admin": "not-an-email"}}, "llmcloud:chatUi.admin"),
    (
        {"chatUi": {"admin": "a@example.org", "adminChatAccess": "sometimes"}},
        "llmcloud:chatUi.adminChatAccess",
    ),
    # A URL of the kind a typo makes, in every setting that takes one.
    ({"auth": {"provider": "oidc", "clientId": "x", "issuerUrl": "https//kc.example.org"}}, "auth.issuerUrl"),
    (
        {"auth": {"provider": "oidc", "clientId": "x", "issuerUrl": "https://kc..example.org"}},
        "auth.issuerUrl",
    ),
    (
        {"auth": {"provider": "oidc", "clientId": "x", "issuerUrl": "https://kc.example.org:84a3"}},
        "auth.issuerUrl",
    ),
    (
        {"tls": {"acmeEmail": "a@example.org", "acmeDirectory": "https:/acme.example.org"}},
        "tls.acmeDirectory",
    ),
    ({"tls": {"acmeEmail": "a@example.org", "acmeDirectory": "acme.example.org/dir"}}, "tls.acmeDirectory"),
    ({"engine": {"modelSource": {"url": "https://x.org /m.tgz"}}}, "llmcloud:engine.modelSource.url"),
    ({"engine": {"modelSource": {"url": "https://objects.example.org"}}}, "llmcloud:engine.modelSource.url"),
    ({"alertWebhook": "htps://chat.example.org/hooks/t0k3n"}, "llmcloud:alertWebhook"),
    # No load balancer is the whole internet: a client would choose its own X-Forwarded-For.
    ({"tls": {"mode": "external", "trustedProxies": ["0.0.0.0/0"]}}, "llmcloud:tls.trustedProxies"),
    ({"tls": {"mode": "external", "trustedProxies": ["10.0.0.5/32", "::/0"]}}, "llmcloud:tls.trustedProxies"),
]


@pytest.mark.parametrize(("changes", "named"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_setting_is_refused_naming_the_key(changes, named):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is DELETE:
            raw.pop(key)
        elif isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert named in str(err.value), str(err.value)


def test_all_problems_are_reported_at_once():
    raw = {**BASE, "replicas": 0, "domain": "x", "adminCidrs": ["nope"]}
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert len(err.value.problems) == 3


def test_bad_value_is_shown_but_a_secret_never():
    with pytest.raises(ConfigError) as err:
        parse({**BASE, "engineNode": {"dataVolumeSize": 5}, "cookieSecret": "tiny-secret-value"})
    text = str(err.value)
    assert "(got 5)" in text
    assert "tiny-secret-value" not in text


def test_a_bad_secret_url_is_named_but_never_shown():
    with pytest.raises(ConfigError) as err:
        parse({**BASE, "alertWebhook": "https://chat.example.org:99999/hooks/t0k3n-value"})
    assert "llmcloud:alertWebhook" in str(err.value) and "port" in str(err.value)
    assert "t0k3n-value" not in str(err.value)


def test_good_urls_pass():
    cfg = parse(
        {
            **BASE,
            "alertWebhook": "https://chat.example.org/hooks/abc",
            "auth": {
                "provider": "oidc",
                "clientId": "x",
                "issuerUrl": "https://10.0.0.5:8443/realms/lab",
                "allowedEmailDomains": ["example.org"],
            },
            "tls": {"acmeEmail": "a@example.org", "acmeDirectory": "https://localhost:14000/dir"},
        }
    )
    assert cfg.auth.issuer_url == "https://10.0.0.5:8443/realms/lab"


def test_plain_text_secret_is_refused():
    with pytest.raises(ConfigError) as err:
        parse(BASE, secret_keys=set())
    assert "llmcloud:oauthClientSecret: must be a secret" in str(err.value)
    assert parse(BASE, secret_keys={"oauthClientSecret"})


def test_schema_is_the_one_source_of_settings():
    # Every setting the example stack documents exists in the schema, and the reverse for top-level keys.
    example = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.example.yaml").read_text())["config"]
    documented = {k.split(":", 1)[1] for k in example if k.startswith("llmcloud:")}
    fields = {f.alias or name for name, f in StackConfig.model_fields.items()}
    assert documented <= fields
    assert fields - documented <= {
        "cookieSecret",
        "hfToken",
        "alertWebhook",
        "resticPassword",
        "oauthClientSecret",
        "keypairName",
        "sshPrivateKeyFile",  # commented out in the example: it must name a file on this machine
        "quotas",  # commented out in the example: no quotas unless set
    }


def test_an_exact_image_alone_replaces_the_default_pattern():
    cfg = parse({**BASE, "engineNode": {"image": "Ubuntu-24.04-20260901"}})
    assert (cfg.engine_node.image, cfg.engine_node.image_pattern) == ("Ubuntu-24.04-20260901", None)


def test_chat_ui_admin_comes_from_the_stack_or_is_not_needed_when_off():
    from llmcloud.contract import role_vars

    def group_vars(cfg):
        return role_vars(cfg, ["llm1"])

    assert group_vars(parse(BASE))["open_webui_admin_email"] == "admin@example.org"
    # Without chatUi.admin: the role takes the first of monitoring.admins (nginx_admin_emails); the chat UI is
    # on by site.yml's default (open_webui_enabled left out).
    cfg = parse(with_(chatUi=DELETE, monitoring__admins=["ops@example.org"]))
    assert "open_webui_admin_email" not in group_vars(cfg) and "open_webui_enabled" not in group_vars(cfg)
    off = group_vars(parse(with_(chatUi={"enabled": False})))
    assert off["open_webui_enabled"] is False


def test_quotas_reach_the_edge_in_the_roles_form_and_mistakes_are_named():
    cfg = parse(
        {
            **BASE,
            "quotas": {
                "default": {"tokensPerDay": 1000, "tokensPer30Days": 20000},
                "groups": {"students": {"tokensPerDay": 500}},
                "people": {"PI@Example.org": {"tokensPerDay": None}},
                "keys": {"ci": {"requestsPerDay": 10}},
                "exempt": ["admin@example.org", "key:monitor"],
                "alertAt": 0.8,
            },
        }
    )
    wired = contract.role_vars(cfg, ["llm1"])
    assert wired["nginx_usage_quotas"] == {
        "default": {"tokens_per_day": 1000, "tokens_per_30_days": 20000},
        "groups": {"students": {"tokens_per_day": 500}},
        "people": {"PI@Example.org": {"tokens_per_day": None}},  # the role keeps e-mails in lower case
        "keys": {"ci": {"requests_per_day": 10}},
        "exempt": ["admin@example.org", "key:monitor"],
    }
    assert wired["nginx_usage_alert_fraction"] == 0.8
    assert "nginx_usage_enabled" not in wired  # unset: the role's default
    for bad, named in [
        ({"default": {"tokensPerDay": 0}}, "quotas.default.tokensPerDay"),
        ({"default": {"tokensPerWeek": 5}}, "quotas.default.tokensPerWeek"),
        ({"people": {"alice": {"tokensPerDay": 5}}}, "quotas.people.alice is not an e-mail"),
        ({"keys": {"c i": {"tokensPerDay": 5}}}, "quotas.keys.c i is not an API key's name"),
        ({"exempt": ["root"]}, "'root' is neither an e-mail nor key:<API key name>"),
        ({"alertAt": 2}, "quotas.alertAt"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse({**BASE, "quotas": bad})
        assert named in str(err.value), (bad, str(err.value))
    with pytest.raises(ConfigError, match="quotas need usage accounting"):
        parse({**BASE, "quotas": {"default": {"tokensPerDay": 5}}, "usage": {"enabled": False}})
