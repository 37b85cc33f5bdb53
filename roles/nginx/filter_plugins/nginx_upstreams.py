"""The engine pool of an edge host, as nginx `server` lines."""


def llmcloud_upstream(pair, edge_host):
    """(private_ip, host name) of an llm host -> the address nginx reaches its engine at."""
    address, host = pair
    if host == edge_host:
        return "127.0.0.1"  # the engine binds 127.0.0.1 on a host that is its own edge
    if not address:
        raise ValueError(f"llm host {host} has no private_ip in the inventory: the edge cannot reach it")
    return address


class FilterModule:
    def filters(self):
        return {"llmcloud_upstream": llmcloud_upstream}
