"""The engines Prometheus watches: each llm host's main engine and the more models it serves."""

# Engines without Prometheus metrics on their API port: probed on this path instead (blackbox).
PROBED = {"ollama": "/", "tei": "/health"}


def llmcloud_engine_targets(llm_hosts, hostvars, extra_models, default_port):
    """[{host, port, kind, model, probe}] in inventory order; probe is a path, or None for /metrics."""
    engines = []
    for host in llm_hosts:
        own = hostvars[host]
        serving = [
            {
                "port": own.get("llm_engine_port", default_port),
                "kind": own.get("llm_engine_kind", "tgi"),
                "model": own.get("llm_engine_model_id", ""),
            }
        ] + [
            {"port": m["port"], "kind": m.get("kind", "tgi"), "model": m["model_id"]}
            for m in extra_models
            if host in m.get("hosts", [])
        ]
        for engine in serving:
            engines.append({"host": host, **engine, "probe": PROBED.get(engine["kind"])})
    return engines


class FilterModule:
    def filters(self):
        return {"llmcloud_engine_targets": llmcloud_engine_targets}
