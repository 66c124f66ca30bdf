"""What systemd runs, and nothing else: the daemon (app), its pipeline, the probe's settings state,
config, health, the model wrapper and the MQTT command handlers (docs/architecture.md, "The house")."""
