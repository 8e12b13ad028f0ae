"""A local Galtea API emulator with fault injection.

Start it in-process with :class:`EmulatorThread`, in the foreground with
:func:`run_emulator`, or from the shell with ``galtea-local emulator``.
"""

from galtea_local_daemon.emulator.faults import FaultConfig, FaultInjector
from galtea_local_daemon.emulator.server import EmulatorThread, run_emulator
from galtea_local_daemon.emulator.state import Store

__all__ = ["EmulatorThread", "FaultConfig", "FaultInjector", "Store", "run_emulator"]
