"""The engine pools of an edge host: nginx `server` lines, and one pool per model of llmcloud_extra_models."""

from ansible.errors import AnsibleFilterError


def llmcloud_upstream(pair, edge_host):
    """(private_ip, host name) of an llm host -> the address nginx reaches its engine at."""
    address, host = pair
    if host == edge_host:
        return "127.0.0.1"  # the engine binds 127.0.0.1 on a host that is its own edge
    if not address:
        raise ValueError(f"llm host {host} has no private_ip in the inventory: the edge cannot reach it")
    return address


def llmcloud_model_pools(models, default_names, hostvars, edge_host, llm_hosts):
    """nginx_models -> {"pools": [{"index", "model", "servers"}], "routes": {model name: pool index},
    "configured": [the names of pool 0, of pool 1, ...]}.

    Pool 0 is the main engine pool (llmcloud_engines): its model, its LoRA adapters, and requests that name no
    model. Each further model gets the pool of the hosts that serve it, on its own port.
    """
    routes = {name: 0 for name in default_names}
    pools = []
    for number, model in enumerate(models, start=1):
        where = f"nginx_models[{number - 1}]"
        if not isinstance(model, dict):
            raise AnsibleFilterError(f"{where} must be a mapping with model_id, port and hosts")
        missing = [key for key in ("model_id", "port", "hosts") if key not in model]
        if missing:
            raise AnsibleFilterError(
                f"{where} ({model.get('model_id', '?')}) lacks {', '.join(missing)}: each model names "
                "the name clients send (model_id), its engine port and the llm hosts that serve it"
            )
        name = str(model["model_id"])
        if name in routes:
            raise AnsibleFilterError(
                f"{where}: model {name!r} is served twice (the main engine or another entry); "
                "names must be unique"
            )
        strangers = [host for host in model["hosts"] if host not in llm_hosts]
        if not model["hosts"] or strangers:
            raise AnsibleFilterError(
                f"{where} ({name}): hosts must name hosts of group llm "
                f"(got {model['hosts']}; unknown: {strangers})"
            )
        port = int(model["port"])
        servers = [
            f"{llmcloud_upstream((hostvars[host].get('private_ip', ''), host), edge_host)}:{port}"
            for host in model["hosts"]
        ]
        routes[name] = number
        # Ollama serves an untagged name as name:latest, and lists it so in /v1/models: both pick its pool.
        if model.get("kind") == "ollama" and ":" not in name.rsplit("/", 1)[-1]:
            routes.setdefault(f"{name}:latest", number)
        pools.append({"index": number, "model": name, "servers": servers})
    configured = [list(default_names)] + [[pool["model"]] for pool in pools]
    return {"pools": pools, "routes": routes, "configured": configured}


class FilterModule:
    def filters(self):
        return {"llmcloud_upstream": llmcloud_upstream, "llmcloud_model_pools": llmcloud_model_pools}
