"""A stateless ML2 mechanism driver: binds every port on any host as an OVS port, status ACTIVE.

Without a mechanism driver that binds, Nova's boot fails with PortBindingFailed. Neutron's in-tree
`test` driver binds only magic host names and keeps its state in memory, so it cannot be used.
"""

import uuid

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api

#: Namespace for the resource-provider UUIDs ML2 may ask for; any fixed UUID works.
NAMESPACE = uuid.UUID("5b1f0c1e-3d0a-4c59-8f4e-2b7a1c6d9e10")


class BindAllMechanismDriver(api.MechanismDriver):
    def initialize(self):
        """No state: every decision is made from the port's own context."""

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return

    @property
    def resource_provider_uuid5_namespace(self):
        return NAMESPACE

    @property
    def supported_vnic_types(self):
        return [portbindings.VNIC_NORMAL]

    def get_standard_device_mappings(self, agent):
        return {}

    def filter_hosts_with_segment_access(self, context, segments, candidate_hosts, agent_getter):
        return set(candidate_hosts)
