"""OpenStack provisioning with Pulumi: one ComponentResource per concern.

`program()` in program.py wires them together; `__main__.py` only calls it, so tests can run it
under Pulumi mocks.
"""

#: The port the inference engine listens on, on the private network of an engine VM.
ENGINE_PORT = 8080
#: The exporters Prometheus (on the edge) scrapes on the engine VMs: roles node_exporter, dcgm_exporter.
NODE_EXPORTER_PORT = 9100
DCGM_EXPORTER_PORT = 9400
#: Where the data volume (model cache) is mounted on engine VMs.
DATA_MOUNT = "/srv/llmcloud"
#: Where the restic role mounts a Manila backup share (its restic_nfs_mount default).
NFS_MOUNT = "/mnt/llmcloud-backup"
