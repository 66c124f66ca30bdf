"""Mutation report for the core pure modules: ``make mutation`` (docs/testing.md).

Each module is mutated by mutmut (3.x) with only its relevant tests, in a throw-away copy of the
repository (the working tree is never touched), one module after another. The report (score and
the surviving mutants with their diffs) goes to build/mutation/report.md and report.json.

    python scripts/mutation.py                   # every module
    python scripts/mutation.py protocol search   # some of them
    python scripts/mutation.py --budget-s 600    # stop a module's run after 10 min (partial figure)

Score = killed (a test failed, or the mutant hung until mutmut's timeout) / (mutants − equivalent
ones). A mutant no test reaches counts as surviving. Equivalent mutants (a change no behaviour can
show) are excluded by name in scripts/mutation_equivalent.toml, each with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "scripts" / "mutation_equivalent.toml"
PACKAGES = ["firmware_bridge", "service", "sim", "models"]


@dataclass(frozen=True)
class Target:
    name: str
    path: str  # the file mutated
    tests: tuple[str, ...]  # pytest arguments selecting its tests
    only: str = ""  # mutmut name glob: only these functions count (e.g. the manifest reader)


TARGETS = [
    Target(
        "control",
        "service/policy/autotune.py",
        ("tests/daemon/test_autotune.py", "tests/daemon/test_autotune_rules.py"),
    ),
    Target(
        "guidance",
        "service/policy/guidance.py",
        (
            "tests/daemon/test_guidance.py",
            "tests/daemon/test_guidance_words.py",
            "tests/daemon/test_guidance_rules.py",
            "tests/daemon/test_guidance_search.py",
        ),
    ),
    Target(
        "search",
        "service/policy/search.py",
        (
            "tests/daemon/test_search_rules.py",
            "tests/daemon/test_guidance_search.py",
            "tests/daemon/test_guidance_rules.py",
        ),
    ),
    Target("belief", "service/policy/belief.py", ("tests/daemon/test_belief.py",)),
    Target(
        "protocol",
        "firmware_bridge/protocol.py",
        ("tests/bridge/test_protocol.py", "tests/bridge/test_framing_rules.py"),
    ),
    Target("config", "service/daemon/config.py", ("tests/daemon/test_config.py",)),
    Target(
        "manifest",
        "service/daemon/onnx_model.py",
        (
            "tests/models/test_model.py",
            "-k",
            "tampered or wrong_units or loads_verifies or describes or reader",
        ),
        only="service.daemon.onnx_model.x_read_manifest__mutmut_*",
    ),
]

KILLED = {"killed", "timeout"}
NOT_RUN = {"not checked", "skipped", "check was interrupted by user"}


def copy_repo(dest: Path) -> None:
    """The files git would ship (tracked, plus new ones not ignored), as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in filter(None, listed):
        rel = raw.decode()
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def mutmut_config(t: Target) -> str:
    def toml_list(items: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {toml_list(PACKAGES)}\n"
        f"only_mutate = {toml_list([t.path])}\n"
        'also_copy = ["docs", "scripts"]\n'
        f"pytest_add_cli_args_test_selection = {toml_list(t.tests)}\n"
        # fastest tests first (scripts/mutation_order.py): -x then stops a killed mutant sooner
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-p", "scripts.mutation_order"]\n'
        "use_git_change_detection = false\n"
    )


def mutmut(work: Path, *args: str, timeout: float | None = None) -> str:
    """Run mutmut in ``work`` (niced); on ``timeout`` its whole process group is stopped, and
    TimeoutExpired raised (the mutants it finished stay recorded in mutants/*.meta)."""
    exe = str(Path(sys.executable).parent / "mutmut")
    proc = subprocess.Popen(
        ["nice", "-n", "10", exe, *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return out


def run_target(t: Target, budget_s: float, children: int, equivalent: dict[str, str]) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutation-{t.name}-") as tmp:
        work = Path(tmp)
        copy_repo(work)
        with (work / "pyproject.toml").open("a") as f:
            f.write(mutmut_config(t))
        finished = True
        try:
            mutmut(
                work, "run", "--max-children", str(children), *([t.only] if t.only else []), timeout=budget_s
            )
        except subprocess.TimeoutExpired:
            finished = False  # what ran is in mutants/*.meta: report it as a partial figure
        listing = mutmut(work, "results", "--all", "true")
        statuses = {}
        for line in listing.splitlines():
            name, sep, status = line.strip().rpartition(": ")
            if sep and (not t.only or _glob(name, t.only)):
                statuses[name] = status
        survivors = sorted(
            n for n, s in statuses.items() if s not in KILLED | NOT_RUN and n not in equivalent
        )
        diffs = {n: _diff(mutmut(work, "show", n)) for n in survivors}
    ran = {n: s for n, s in statuses.items() if s not in NOT_RUN}
    excluded = sorted(n for n in ran if n in equivalent)
    counted = len(ran) - len(excluded)
    killed = sum(1 for n, s in ran.items() if s in KILLED and n not in equivalent)
    return {
        "module": t.name,
        "file": t.path,
        "tests": list(t.tests),
        "mutants": len(statuses),
        "ran": len(ran),
        "finished": finished and len(ran) == len(statuses),
        "killed": killed,
        "equivalent": excluded,
        "survived": {n: diffs[n] for n in survivors},
        "score": round(killed / counted, 4) if counted else None,
        "seconds": round(time.monotonic() - started, 1),
        "run_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python scripts/mutation.py {t.name} --budget-s {budget_s:g} --children {children}",
    }


def _glob(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def _diff(shown: str) -> str:
    return "\n".join(
        line for line in shown.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    )


def write_report(new_rows: list[dict], command: str, out: Path = OUT) -> None:
    """The report of every module run so far: this run's rows replace earlier rows of the same module."""
    out.mkdir(parents=True, exist_ok=True)
    earlier = (
        json.loads((out / "report.json").read_text())["modules"] if (out / "report.json").is_file() else []
    )
    fresh = {r["module"] for r in new_rows}
    order = [t.name for t in TARGETS]
    rows = sorted(
        [r for r in earlier if r["module"] not in fresh] + new_rows, key=lambda r: order.index(r["module"])
    )
    killed = sum(r["killed"] for r in rows)
    counted = sum(r["ran"] - len(r["equivalent"]) for r in rows)
    total = {"score": round(killed / counted, 4) if counted else None, "killed": killed, "counted": counted}
    (out / "report.json").write_text(
        json.dumps({"command": command, "total": total, "modules": rows}, indent=1)
    )
    lines = [
        "# Mutation report",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| module | file | mutants run | killed | equivalent | survived | score | complete | time | run at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        score = "—" if r["score"] is None else f"{100 * r['score']:.1f}%"
        lines.append(
            f"| {r['module']} | `{r['file']}` | {r['ran']}/{r['mutants']} | {r['killed']} | "
            f"{len(r['equivalent'])} | {len(r['survived'])} | {score} | {'yes' if r['finished'] else 'partial'} | "
            f"{r['seconds']:.0f} s | {r.get('run_at', '?')} |"
        )
    score = "—" if total["score"] is None else f"{100 * total['score']:.1f}%"
    lines += ["", f"**All: {killed} of {counted} counted mutants killed, {score}.**", ""]
    for r in rows:
        if r["survived"]:
            lines += [f"## Surviving in {r['module']} (`{r['file']}`)", ""]
            for name, diff in r["survived"].items():
                lines += [f"- `{name}`", "", "```diff", diff, "```", ""]
    (out / "report.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(t.name for t in TARGETS)}")
    ap.add_argument("--budget-s", type=float, default=1800.0, help="per module; the rest is reported partial")
    ap.add_argument("--children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--out", type=Path, default=OUT, help="report folder (default build/mutation)")
    args = ap.parse_args(argv)
    by_name = {t.name: t for t in TARGETS}
    unknown = [m for m in args.modules if m not in by_name]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; known: {', '.join(by_name)}")
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        print(
            "mutation: mutmut is not installed here; run `make setup` (it is in the dev extra)",
            file=sys.stderr,
        )
        return 2
    equivalent = {e["name"]: e["reason"] for e in tomllib.loads(EQUIVALENT.read_text()).get("equivalent", [])}
    rows = []
    for name in args.modules or list(by_name):
        print(f"mutation: {name} ...", file=sys.stderr, flush=True)
        row = run_target(by_name[name], args.budget_s, args.children, equivalent)
        rows.append(row)
        score = "—" if row["score"] is None else f"{100 * row['score']:.1f}%"
        print(
            f"mutation: {name}: {row['killed']} killed, {len(row['survived'])} survived, "
            f"{len(row['equivalent'])} equivalent, score {score}"
            f"{'' if row['finished'] else ' (partial)'}, {row['seconds']:.0f} s",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        write_report(
            rows,
            "make mutation"
            + (f" MUTATION_ARGS='{' '.join(argv or sys.argv[1:])}'" if (argv or sys.argv[1:]) else ""),
            args.out,
        )
    print(f"mutation: report in {args.out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
