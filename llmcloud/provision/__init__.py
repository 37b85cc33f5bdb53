"""OpenStack provisioning with Pulumi: one ComponentResource per concern.

`program()` in program.py wires them together; `__main__.py` only calls it, so tests can run it
under Pulumi mocks. The hosts, their names and the stack's role variables come from `llmcloud.contract`,
the same plan and mapping the local stack uses.
"""
