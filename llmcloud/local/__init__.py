"""The local stack: Debian 12 systemd containers that stand in for cloud VMs.

They are real hosts for Ansible (systemd, sshd, apt, nftables, Docker inside), reached over SSH on
127.0.0.1, and described by the same inventory shape as an OpenStack stack, through the same mapping:

- ``stack.py``: the flags, the names of what a stack owns in Docker, the order of up, down and status;
- ``settings.py``: the flags as a stack config, through ``contract.role_vars``, plus the reviewed overlay;
- ``hosts.py``, ``idp.py``: the host containers and the identity provider;
- ``artifacts.py``, ``image.py``, ``peers/``, ``engine_ollama.py``: the images they run, built here from
  pinned sources and cached (the engine TEST DOUBLE's build: beside its source, tests/fixtures/engine-double).
"""
