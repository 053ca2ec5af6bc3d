"""Start nova-compute with the harness' compute driver available as ``nova.virt.atrium_lab``.

Runs inside the services venv: ``python nova_compute.py --config-file nova.conf``.
Nova imports ``compute_driver`` only from the ``nova.virt`` package, so the folder holding
our driver is appended to that package's search path before nova-compute starts.
"""

from __future__ import annotations  # noqa: I001  (order matters, see below)

import os
import sys

from nova.cmd.compute import main  # first: applies nova's monkey patching before anything

import nova.virt

nova.virt.__path__.append(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "novavirt"))

if __name__ == "__main__":
    sys.exit(main())
