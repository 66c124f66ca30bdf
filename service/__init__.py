"""sonoguide service: the guidance daemon and its command-line entry points."""

__version__ = "0.1.0"
