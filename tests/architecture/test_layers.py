"""The house's layers, checked on the real import graph (docs/architecture.md, "Layers").

Every ``import`` and ``from ... import`` in every module under firmware_bridge/, models/, sim/ and
service/ counts, at module level or inside a function, relative imports resolved. The rules:

- firmware_bridge, models and sim never import service;
- sim imports nothing of ours but the probe kit's leaf, ``firmware_bridge.kit`` (the bottom of the house);
- no import cycles among our modules (strongly connected components of the graph, Tarjan);
- ``sonoguide run`` with a hardware config does not load the simulator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("firmware_bridge", "models", "sim", "service")
KIT = "firmware_bridge.kit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (package ``__init__``s included)."""
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        package = module if is_package else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join([*base, node.module] if node.module else base)
                else:
                    prefix = node.module or ""
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [f"{prefix}.{alias.name}" for alias in node.names] or [prefix]
                targets.append(prefix)
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is not None and resolved != module:
                    graph[module].add(resolved)
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "service.cli" in graph and "sim.scanner" in graph
    assert "sim.physics" in graph["sim.scanner"]  # module level
    assert any(_top(m) == "sim" for m in graph["service.commands.demo"])  # inside run()


def test_bridge_models_and_sim_never_import_service() -> None:
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if _top(m) in {"firmware_bridge", "models", "sim"}
        for t in targets
        if _top(t) == "service"
    )
    assert not bad, "upward imports (firmware_bridge, models and sim sit below service):\n" + "\n".join(bad)


def test_sim_imports_only_the_probe_kit() -> None:
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if _top(m) == "sim"
        for t in targets
        if _top(t) != "sim" and t != KIT
    )
    assert not bad, f"sim may import nothing of ours but {KIT}:\n" + "\n".join(bad)


def test_the_model_store_stays_below_the_daemon() -> None:
    """service.model_store (bundles, keys, the store on disk) is pure file logic: the daemon, the MQTT
    side and the commands sit on it, never the other way round."""
    bad = sorted(
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if m.startswith("service.model_store")
        for t in targets
        if t.startswith(("service.daemon", "service.mqtt", "service.commands", "service.tools"))
    )
    assert not bad, "service.model_store must not import the daemon:\n" + "\n".join(bad)


def test_the_kit_is_a_leaf() -> None:
    assert not import_graph()[KIT], f"{KIT} must import nothing of the project"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            if children:
                child = children.pop()
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def test_tarjan_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def _is_package_init_edge(src: str, dst: str) -> bool:
    """``pkg/__init__.py`` re-exporting ``pkg.x`` while ``pkg.x`` imports a sibling is how packages work."""
    return dst.startswith(src + ".") or src.startswith(dst + ".")


def test_no_import_cycles() -> None:
    graph = {m: {t for t in ts if not _is_package_init_edge(m, t)} for m, ts in import_graph().items()}
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


PROBE_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    camera, cfg = sys.argv[1], Path(sys.argv[2])
    cfg.write_text(
        '[device]\\nid = "layers-test"\\n'
        '[probe]\\nport = "/dev/sonoguide-no-such-probe"\\n'
        f'[camera]\\nsource = "{camera}"\\nserial = "000000000000"\\n'
        '[mqtt]\\nhost = "127.0.0.1"\\nport = 1\\n'
    )
    import os, signal, threading, time
    def stop_once_running():  # the daemon waits for the absent probe: stop it once it is up
        while not any(t.name == "health" for t in threading.enumerate()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=stop_once_running, daemon=True).start()
    from service.cli import main
    rc = main(["run", "--config", str(cfg)])
    loaded = sorted(m for m in sys.modules if m == "sim" or m.startswith("sim."))
    print("RC", rc)
    print("SIM", ",".join(loaded))
    """
)


def _run_hardware(camera: str, tmp_path: Path) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_RUN, camera, str(tmp_path / f"config-{camera}.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line[:3] in {"RC ", "SIM"})
    assert "RC" in lines, proc.stdout + proc.stderr
    return int(lines["RC"]), [m for m in lines.get("SIM", "").split(",") if m], proc.stderr


def test_sonoguide_run_on_hardware_does_not_load_the_simulator(tmp_path: Path) -> None:
    for camera in ("none", "realsense"):
        rc, sim_modules, stderr = _run_hardware(camera, tmp_path)
        # It got as far as waiting for the absent probe (the model loaded, the config was valid).
        assert rc == 0 and "waiting for the probe" in stderr, stderr
        assert not sim_modules, f"`sonoguide run` (camera {camera}) loaded the simulator: {sim_modules}"
