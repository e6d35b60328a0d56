"""`make bench` runs modules that the test suite does not otherwise import (bench/defisante.py,
bench/load.py run only at its end): each name a bench module imports from another bench module must
exist there. Checked on the source (the bench's own extra, the Python peer, need not be installed)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def test_every_name_a_bench_module_imports_from_another_exists() -> None:
    trees = {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in BENCH.glob("*.py")}
    missing = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bench."):
                source = node.module.removeprefix("bench.")
                assert source in trees, f"bench/{module}.py imports the missing module {node.module}"
                missing += [f"bench/{module}.py: {node.module}.{alias.name}" for alias in node.names
                            if alias.name not in _defined(trees[source])]
    assert trees.keys() >= {"defisante", "load", "serve", "__main__"}
    assert missing == []


def test_every_bench_function_that_makes_a_scratch_directory_removes_it() -> None:
    """A benchmark's data directory is removed when the run ends: the Défi Santé run alone left
    1.4 GB in /tmp each time, and a machine that ran the bench a dozen times had no room left for the
    test suite (the clean-clone CI run of stop 17 failed on a full disk)."""
    leaking = []
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef):
                continue
            calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
            if "tempfile.mkdtemp" in calls and "shutil.rmtree" not in calls:
                leaking.append(f"{path.name}:{node.name}")
    assert not leaking, f"scratch directories left behind by {leaking}"
