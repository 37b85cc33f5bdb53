"""Glue for the local test cloud (`llmcloud-testbed up`): installed into the OpenStack services' venv.

Nothing here runs on a real cloud. Nova's fake driver boots nothing and no L2 agent or storage backend
runs, so two pieces stand in for the dataplane: a mechanism driver that binds every port, and a volume
driver whose image↔volume copies do nothing.
"""
