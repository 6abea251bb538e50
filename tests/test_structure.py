"""The shape of the library (issue 17): no import cycle, deferred imports included; one folder per stage with
its runner and planner; short modules and functions; runners that never plan."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LMFT = ROOT / "lmft"


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of lmft (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(LMFT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported lmft module: line}, from every import statement in the file, those inside
    functions (deferred) included. ``from lmft.a import b`` is an edge to ``lmft.a.b`` where that is a
    module, else to ``lmft.a``."""
    modules = module_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            edges.update({t: node.lineno for t in targets if t in modules and t != name})
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) is None


def test_no_import_cycle_deferred_imports_included():
    graph = import_graph()
    assert "lmft.config" in graph and "lmft.finetune.methods.registry" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_every_module_imports_on_its_own():
    """Each module imported first in a fresh interpreter: no module relies on another having been imported before."""
    names = sorted(module_files())
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for m in [m for m in sys.modules if m == 'lmft' or m.startswith('lmft.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_modules_and_functions_stay_short():
    """No module of lmft over 400 lines, no function over 80 (docstring included, decorators not)."""
    long_modules, long_functions = [], []
    for name, path in module_files().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} (line {node.lineno}): {length} lines")
    assert long_modules == [] and long_functions == [], long_modules + long_functions


def test_each_rules_file_has_its_stage_folder_with_a_runner_and_a_planner():
    """rules/X.smk <-> lmft/X/, which holds the stage's runner (stage.py) and its part of the plan (plan.py)."""
    rules = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {"common"}  # common.smk: the plan, PLAN
    folders = {p.parent.name for p in LMFT.glob("*/__init__.py")}
    assert rules == folders
    missing = [f"lmft/{stage}/{part}.py" for stage in sorted(folders) for part in ("stage", "plan")
               if not (LMFT / stage / f"{part}.py").is_file()]
    assert missing == []


SHARED_CORE = {"__init__", "config", "io", "paths", "plan", "runtime", "schema"}


def test_only_the_shared_core_lies_directly_under_lmft():
    assert {p.stem for p in LMFT.glob("*.py")} == SHARED_CORE


def test_no_runner_imports_a_planner_or_the_config():
    """A stage's runner computes with what the plan resolved, handed over by its rule: it never plans again,
    nor fills in the schema's defaults (the method types check their settings against their own schemas)."""
    graph = import_graph()
    planners = {name for name in graph if name.endswith(".plan")} | {"lmft.plan", "lmft.config"}
    runners = [name for name in graph if name.endswith(".stage")] + ["lmft.finetune.memory"]  # the memory job's
    assert len(runners) == 8
    reached = {}
    for runner in runners:
        seen, todo = set(), [runner]
        while todo:  # everything the runner imports, directly or not, deferred imports included
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reached[runner] = sorted((seen & planners) | ({"lmft.schema"} & set(graph[runner])))
    assert reached == {runner: [] for runner in runners}
