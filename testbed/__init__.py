"""A local OpenStack cloud for tests (`llmcloud-testbed up|down|status`) and the Pulumi engine to drive it.

controlplane.py starts real OpenStack services on 127.0.0.1; pulumi_engine.py builds the Pulumi CLI and a
test-bed OpenStack provider from their Go modules; automation.py runs the llmcloud program against the cloud.
Users never need any of it: they run `pulumi up` with the official CLI and plugin against their own cloud.
"""
