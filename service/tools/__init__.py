"""What the commands use and the daemon does not: evaluation, benchmarks, doctor checks, the live
view, a local mosquitto broker."""
