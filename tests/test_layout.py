"""The layout's rules, read from the code itself: a folder per role, a file per idea.

Every folder under capgen/, pipeline/, model/ and tools/ holds at most 10 modules, every
file at most 400 lines, every function at most 60; imports run capgen -> tools -> model ->
pipeline (capgen, the Python API, is imported by none of them), and there is no import
circle between files nor between folders, counting the imports made inside functions.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("pipeline", "model", "tools", "capgen")
RANK = {"pipeline": 0, "model": 1, "tools": 2, "capgen": 3}  # a package imports only its own rank or lower
MAX_MODULES, MAX_FILE_LINES, MAX_FUNCTION_LINES = 10, 400, 60


def modules():
    """{dotted module name: path} of every .py file under the top-level packages."""
    out = {}
    for top in TOP:
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
                    out[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(folder, name)
    return out


def imported(tree, known):
    """The project modules a file imports anywhere in it (functions included)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m in known}


def graph():
    known = modules()
    return {m: imported(ast.parse(open(p, encoding="utf-8").read()), known) - {m} for m, p in known.items()}


def folder(module, known):
    """A module's folder: its package (a package's __init__ is its own folder)."""
    return module if os.path.basename(known[module]) == "__init__.py" else module.rsplit(".", 1)[0]


def cycle(edges):
    """One import circle in {node: {node}} as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_circle_between_files():
    assert cycle(graph()) is None


def test_no_circle_between_folders():
    known, edges = modules(), {}
    for m, targets in graph().items():
        for t in targets:
            a, b = folder(m, known), folder(t, known)
            if a != b:
                edges.setdefault(a, set()).add(b)
    assert cycle(edges) is None


def test_imports_flow_capgen_tools_model_pipeline():
    wrong = sorted((m, t) for m, ts in graph().items() for t in ts if RANK[t.split(".")[0]] > RANK[m.split(".")[0]])
    assert wrong == []


def test_folders_hold_at_most_10_modules():
    known, counts = modules(), {}
    for m, path in known.items():
        if os.path.basename(path) != "__init__.py":
            counts[folder(m, known)] = counts.get(folder(m, known), 0) + 1
    assert {f: n for f, n in counts.items() if n > MAX_MODULES} == {}


@pytest.mark.parametrize("top", TOP)
def test_files_and_functions_are_short(top):
    long_files, long_functions = [], []
    for folder_path, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in (n for n in files if n.endswith(".py")):
            path = os.path.join(folder_path, name)
            text = open(path, encoding="utf-8").read()
            rel = os.path.relpath(path, ROOT)
            if text.count("\n") > MAX_FILE_LINES:
                long_files.append(rel)
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long_functions.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert (long_files, long_functions) == ([], [])
