"""The package's import layers: no import cycle, and no import from a higher layer.

Every ``import`` / ``from ... import`` in ``flareseg/`` counts, at module level or inside a
function (a lazy import is still a dependency), relative ones too, and a module named whole in a
string (``"flareseg.inference.commands"`` in the command list that ``cli.py`` imports by name; a
module-level constant or an ``import_module`` argument).
``LAYERS`` is the house plan, ground floor first; a module belongs to the layer of its longest
declared prefix, and a module that no entry covers fails the test (declare where it stands).
Within a layer any import is allowed as long as it makes no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flareseg"

#: ground floor first; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("flareseg.errors", "flareseg.console", "flareseg.yaml_read", "flareseg.regular_file", "flareseg.temp_names", "flareseg.labels", "flareseg.config", "flareseg.versions",
                "flareseg.devices", "flareseg.distributed", "flareseg.work_layout")),
    # write_guard plans and records every write that io carries out (io calls it; it imports neither)
    ("files and anatomy", ("flareseg.dicom", "flareseg.file_check", "flareseg.image_check", "flareseg.io",
                           "flareseg.write_guard",
                           "flareseg.cases", "flareseg.anatomy", "flareseg.overlay",
                           # the settings file a model folder carries (config + io + write guard);
                           # the export in flareseg.nnunet writes it
                           "flareseg.inference.model_settings",
                           # array orientation (numpy + SimpleITK): import and predict share it
                           "flareseg.inference.orientation")),
    # one package per paper idea, pure functions over arrays and files
    ("ideas", ("flareseg.data", "flareseg.cleaning", "flareseg.cto", "flareseg.losses", "flareseg.sampling",
               "flareseg.evaluation")),
    # the only code that imports nnunetv2: plans, trainer (uses cto/losses/sampling), model loading
    ("nnunet glue", ("flareseg.nnunet",)),
    # the predictor loads an nnU-Net model folder
    ("inference", ("flareseg.inference",)),
    ("pseudolabel", ("flareseg.pseudolabel",)),
    # the QC page reads the stage folders (named by flareseg.work_layout) and draws each stage; it
    # does not import the pipeline that writes them
    ("report", ("flareseg.report",)),
    ("pipeline", ("flareseg.pipeline",)),
    # command lines and the package's face: `flareseg`, `python -m flareseg.pipeline` (which
    # builds the QC page after a run), the Python API, and docker/predict.sh's publish step
    # (`python -m flareseg.inference.publish`: a command, with the commands' signal handling)
    ("entry points", ("flareseg", "flareseg.cli", "flareseg.pipeline.__main__", "flareseg.api",
                      "flareseg.inference.publish")),
]


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root``."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its code)."""
    mods = modules(root)
    top = root.name

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        # module names in strings: a module-level constant (cli.COMMAND_MODULES) or an
        # import_module("...") argument; a command line run as a subprocess is no import
        named = [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))]
        named += [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, "attr", getattr(n.func, "id", None)) == "import_module"]
        strings = {c.value for n in named if n is not None for c in ast.walk(n)
                   if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        out: set[str | None] = {s for s in strings if "." in s and s in mods}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out.update(known(a.name) for a in node.names if a.name.split(".")[0] == top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != top:
                    continue
                for a in node.names:   # `from pkg import submodule` imports the submodule
                    sub = f"{source}.{a.name}"
                    out.add(sub if sub in mods else known(source))
        out.discard(None)
        out.discard(mod)
        graph[mod] = out  # type: ignore[assignment]
    return graph


def layer_of(mod: str, layers=LAYERS) -> int | None:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    return level


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    bad = []
    for mod in sorted(graph):
        lm = layer_of(mod, layers)
        for dep in sorted(graph[mod]):
            ld = layer_of(dep, layers)
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{mod} ({layers[lm][0]}) imports {dep} ({layers[ld][0]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT)


def test_every_module_has_a_declared_layer(graph):
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_import_from_a_higher_layer(graph):
    assert upward_imports(graph) == []


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_the_walk_sees_the_imports_it_checks(graph):
    # module level, inside a function, `from package import module`, and a module named in a string
    assert "flareseg.inference.predictor" in graph["flareseg.pseudolabel.members"]
    assert "flareseg.devices" in graph["flareseg.nnunet.training"]          # inside train()
    assert "flareseg.report.html" in graph["flareseg.report.qc"]            # from flareseg.report import html
    assert "flareseg.inference.commands" in graph["flareseg.cli"]           # COMMAND_MODULES


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "flareseg"
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_a_planted_upward_import_and_cycle_are_caught(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "labels.py": "def f():\n    from flareseg.report import qc\n",       # ground -> report, lazily
        "report/__init__.py": "",
        "report/qc.py": "from . import sections\n",
        "report/sections.py": "from .qc import x\n",                          # qc <-> sections
    })
    g = import_graph(root)
    assert upward_imports(g) == ["flareseg.labels (ground) imports flareseg.report.qc (report)"]
    assert cycles(g) == [["flareseg.report.qc", "flareseg.report.sections"]]
