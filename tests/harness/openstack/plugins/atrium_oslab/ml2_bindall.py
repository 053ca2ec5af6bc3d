"""An ML2 mechanism driver that binds every port at once, without any L2 agent.

The harness has no Open vSwitch or Linux bridge agent, so no stock driver would ever bind
a port and Nova would wait for (or fail on) network plugging. This driver claims each port
on its first segment and reports it ACTIVE, which is all Nova needs to hand the server its
fixed IP. Test harness only: it provides no connectivity at all.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindAllMechanismDriver(api.MechanismDriver):  # type: ignore[misc]
    """Bind any port on any host; the VIF type is irrelevant to the harness' compute driver."""

    def initialize(self) -> None:
        """Nothing to set up: the driver keeps no state."""

    @property
    def connectivity(self) -> str:
        return str(portbindings.CONNECTIVITY_L2)

    def bind_port(self, context: Any) -> None:
        """Bind to the first segment offered (the harness networks have exactly one)."""
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: False, portbindings.OVS_HYBRID_PLUG: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
