"""Public entry point for Python trading processes: the in-process gate (see the README).

`from killswitch.inprocess import SidecarSettings, SidecarThread` is a documented import;
the implementation lives in `killswitch.sidecar`.
"""

from killswitch.sidecar.inprocess import SidecarThread
from killswitch.sidecar.settings import SidecarSettings

__all__ = ["SidecarSettings", "SidecarThread"]
