"""The import contract: camelid's layers point one way (docs: DESIGN.md §2, "Architecture of the code").

The graph is read from the source with `ast`, every import statement included, those inside functions
too: a function-local import is still a dependency, it only hides it from a module-level reader.
Every module gets a layer from LAYERS by its path; a module no entry covers fails the test, so a new
top-level module or package forces a decision about where it belongs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "camelid"

# Module or package (the longest matching prefix wins) -> layer.
LAYERS = {
    # core: the model and what every layer shares; imports nothing above it
    "camelid.model": "core",
    "camelid.tokenizer": "core",
    "camelid.chat_format": "core",
    "camelid.checkpoint": "core",
    "camelid.reward_model": "core",
    "camelid.config": "core",
    "camelid.errors": "core",
    "camelid.fsutil": "core",
    "camelid.dtypes": "core",
    "camelid.kernels": "core",
    "camelid.lazy": "core",  # lazy re-exports for package __init__s
    "camelid.runlog": "core",  # reading a run's metrics.jsonl
    "camelid.plot": "core",  # figures: a leaf, every layer may draw
    # beside the core: each imports only the core
    "camelid.parallel": "parallel",
    "camelid.scaling": "scaling",  # pure maths: laws, fits, planner; no training code
    # the pipeline, bottom up
    "camelid.data": "data",  # pure transforms: no sampling from models, no judging
    "camelid.infer": "infer",
    "camelid.tasks": "tasks",  # the proving ground: tasks, judges, evaluation
    "camelid.train": "stages",
    "camelid.rlhf": "stages",
    "camelid.report_card": "stages",
    # face: the commands and the package's public names (lazy re-exports from every layer)
    "camelid.cli": "face",  # the package: main() and one module per command group
    "camelid.__main__": "face",
    "camelid.quickstart": "face",
    "camelid": "face",  # camelid/__init__.py only: the prefix match is by whole dotted parts
}

ORDER = ["core", "parallel", "scaling", "data", "infer", "tasks", "stages", "face"]

# layer -> the layers its modules may import (itself included).
ALLOWED = {
    "core": {"core"},
    "parallel": {"core", "parallel"},
    "scaling": {"core", "scaling"},
    "data": {"core", "parallel", "data"},
    "infer": {"core", "parallel", "data", "infer"},
    "tasks": {"core", "parallel", "data", "infer", "tasks"},
    "stages": {"core", "parallel", "data", "infer", "tasks", "stages"},
    "face": {"core", "parallel", "scaling", "data", "infer", "tasks", "stages", "face"},
}


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    mods = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported camelid module) of every import statement in the file, at any depth.

    `from camelid.x import y` is an import of camelid.x.y when that is a module, else of camelid.x;
    relative imports are resolved against the importing module's package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        out += [(node.lineno, t) for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")]
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None and (n > 1 or module == PACKAGE):
            return layer
    return None


def unit_of(module: str) -> str:
    """The package-level node: camelid.<package> or camelid.<top-level module> (camelid itself for __init__)."""
    return ".".join(module.split(".")[:2])


def import_graph(root: Path = ROOT):
    """({module: file}, sorted distinct (importer, line, imported module))."""
    modules = find_modules(root)
    edges = {(name, line, target) for name, path in modules.items() for line, target in imports_of(name, path, modules)}
    return modules, sorted(edges)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def layer_violations(modules, edges) -> list[str]:
    problems = []
    for name, path in modules.items():
        if layer_of(name) is None:
            problems.append(f"{rel(path)}: module {name} has no layer: add it (or its package) to LAYERS in "
                            f"tests/test_layers.py")
    for name, line, target in edges:
        src, dst = layer_of(name), layer_of(target)
        if src is None or dst is None or dst in ALLOWED[src]:
            continue
        problems.append(f"{rel(modules[name])}:{line}: {name} ({src}) imports {target} ({dst}); "
                        f"{src} may import only {', '.join(x for x in ORDER if x in ALLOWED[src])}")
    return problems


def strongly_connected(nodes, succ) -> list[list[str]]:
    """Components of more than one node (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return comps


def cycles(modules, edges, unit) -> list[str]:
    """One message per import cycle between the nodes `unit` maps modules to, with every edge inside it."""
    succ, where = defaultdict(set), defaultdict(list)
    for name, line, target in edges:
        a, b = unit(name), unit(target)
        if a is None or b is None or a == b:
            continue
        succ[a].add(b)
        where[a, b].append(f"{rel(modules[name])}:{line} imports {target}")
    problems = []
    for comp in strongly_connected({unit(m) for m in modules} - {None}, succ):
        inside = [f"    {w}" for a in comp for b in comp if (a, b) in where for w in where[a, b]]
        problems.append(f"import cycle between {', '.join(comp)}:\n" + "\n".join(inside))
    return problems


def test_every_module_has_a_layer_and_imports_point_down():
    problems = layer_violations(*import_graph())
    assert not problems, "imports against the layers (DESIGN.md §2):\n" + "\n".join(problems)


def test_no_import_cycle_between_packages():
    problems = cycles(*import_graph(), unit_of)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    modules, edges = import_graph()

    def module_unit(module: str) -> str | None:  # package __init__s left out: re-exporting names is no cycle
        return None if modules.get(module, Path()).name == "__init__.py" else module

    problems = cycles(modules, edges, module_unit)
    assert not problems, "\n".join(problems)


def test_figures_and_scaling_load_without_torch():
    """plot is a leaf and scaling is maths: neither pulls torch in through the training code."""
    light = ["camelid.plot", "camelid.runlog", "camelid.scaling.report", "camelid.scaling.sweep",
             "camelid.cli.scaling", "camelid.scaling.planner", "camelid.tasks.eval"]
    code = f"import sys\nfor m in {light!r}: __import__(m)\nprint(sorted(m for m in ('torch', 'camelid.train') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def command_line_code(modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """Where a module outside camelid.cli imports argparse or defines a command's flags (`add_*arguments`)."""
    problems = []
    for name, path in modules.items():
        if name == "camelid.cli" or name.startswith("camelid.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.split(".")[0] == "argparse"]
            elif isinstance(node, ast.ImportFrom):
                found = [node.module] if (node.module or "").split(".")[0] == "argparse" and not node.level else []
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("add_") \
                    and node.name.endswith("arguments"):
                found = [f"def {node.name}"]
            else:
                continue
            problems += [f"{path.relative_to(root)}:{node.lineno}: {name}: {what}" for what in found]
    return problems


def test_command_lines_live_in_camelid_cli():
    """Library modules take typed arguments; flags, argparse and add_arguments belong to camelid/cli."""
    problems = command_line_code(find_modules())
    assert not problems, "command-line code outside camelid/cli (move it to a module of camelid/cli):\n" + \
        "\n".join(problems)


def test_the_command_line_check_sees_argparse_and_flags(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "cli").mkdir(parents=True)
    (pkg / "train").mkdir()
    (pkg / "cli" / "x.py").write_text("import argparse\n\ndef add_arguments(p):\n    pass\n")
    (pkg / "train" / "a.py").write_text("def f():\n    import argparse\n")
    (pkg / "train" / "b.py").write_text("from argparse import Namespace\n\ndef add_model_arguments(p):\n    pass\n")
    (pkg / "train" / "c.py").write_text("def run(args):\n    return 0\n")
    assert command_line_code(find_modules(tmp_path), tmp_path) == [
        "camelid/train/a.py:2: camelid.train.a: argparse",
        "camelid/train/b.py:1: camelid.train.b: argparse",
        "camelid/train/b.py:3: camelid.train.b: def add_model_arguments",
    ]


def test_the_graph_reader_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("from .sub import f\n")
    (pkg / "data" / "sub.py").write_text(
        "import os\n\ndef f():\n    from camelid.infer import engine\n    from .. import errors\n"
        "    import camelid.tasks.eval as e\n    from camelid.data import sub\n")
    (pkg / "infer").mkdir()
    (pkg / "infer" / "__init__.py").write_text("")
    (pkg / "infer" / "engine.py").write_text("from camelid.data.sub import f\n")
    modules, edges = import_graph(tmp_path)
    assert sorted(edges) == [
        ("camelid.data", 1, "camelid.data.sub"),
        ("camelid.data.sub", 4, "camelid.infer.engine"),
        ("camelid.data.sub", 5, "camelid.errors"),
        ("camelid.data.sub", 6, "camelid.tasks.eval"),
        ("camelid.data.sub", 7, "camelid.data.sub"),
        ("camelid.infer.engine", 1, "camelid.data.sub"),
    ]
    assert layer_of("camelid.data.sub") == "data" and layer_of("camelid") == "face"
    assert layer_of("camelid.newmodule") is None
    assert [unit_of(m) for m in ("camelid", "camelid.model", "camelid.data.sub")] == \
        ["camelid", "camelid.model", "camelid.data"]
    comps = strongly_connected({"a", "b", "c", "d"}, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert comps == [["a", "b", "c"]]
