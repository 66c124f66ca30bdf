"""One module per `sonoguide` subcommand, named after it; each has ``add_arguments`` and ``run``.

Registered in the one table, ``service.cli.COMMANDS``. Modules are imported when the parser is built,
so heavy imports (ONNX Runtime, librealsense, the simulator) stay inside ``run``.
"""
