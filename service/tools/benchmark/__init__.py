"""`sonoguide bench`: real processes (emulator on a pty, the daemon, mosquitto, a subscriber) measured
from outside. ``stats`` is the pure arithmetic, ``procs`` owns the processes, ``suite`` runs it all."""
