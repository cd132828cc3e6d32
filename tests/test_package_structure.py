"""The package's shape (issue 30 item 4): no module over 400 lines, no import cycle, and function-local
imports only where they are deliberate (the CLI edge's lazy TensorFlow import, optional dependencies),
each with a one-line reason. Read from the source with `ast`, without importing anything."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pddm_tf"
MAX_LINES = 400
#: Modules still over the limit, each being split on another branch (they pass once under it).
_BEING_SPLIT: dict[str, str] = {}
#: Optional dependencies: imported where used, so that the package works without them.
_OPTIONAL = ("faiss", "matplotlib", "sklearn", "scipy", "threadpoolctl", "pymilvus", "milvus_lite", "torch")
#: Function-local imports of other helpers' modules, not yet given a reason or moved (listed, not hidden).
_OTHERS: set[str] = set()


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _module_level_imports(tree: ast.Module):
    """The import statements run when the module is imported (not those under `if TYPE_CHECKING:`)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [h for x in node.handlers for h in x.body])


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, pathlib.Path], package: str) -> set[str]:
    """The pddm_tf modules an import statement imports (a submodule when `from pkg import submodule`)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
    found = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            found.add(f"{base}.{alias.name}")
        elif base in modules:
            found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        graph[name] = set().union(*(_targets(node, modules, package) for node in _module_level_imports(tree)))
        graph[name].discard(name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    graph = _graph()
    assert graph["pddm_tf.training.config"] >= {"pddm_tf.methods.spec"}  # the graph sees real edges
    assert "pddm_tf.cli.validation" not in graph["pddm_tf.training.config"]  # training does not import the CLI
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_training_package_does_not_import_the_command_line():
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith(("pddm_tf.training", "pddm_tf.methods", "pddm_tf.data")):
            assert not [t for t in targets if t.startswith("pddm_tf.cli")], name


def test_no_module_over_400_lines():
    long = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    over = {name: lines for name, lines in long.items() if lines > MAX_LINES and name not in _BEING_SPLIT}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_function_local_imports_are_deliberate_and_say_why():
    refused = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        source = path.read_text()
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                where = f"{relative}:{node.lineno} imports {module}"
                if relative in _OTHERS:
                    continue
                optional = (module or "").split(".")[0] in _OPTIONAL
                if not (relative.startswith("cli/") or optional):
                    refused.append(f"{where}: import it at the top of the module")
                # The reason: a comment on the line, on the line above, or on the first of the block's imports.
                above = [lines[i].strip() for i in range(node.lineno - 2, max(node.lineno - 8, -1), -1)]
                reason = "#" in lines[node.lineno - 1] or any(
                    text.startswith("#") for text in above[: next((i for i, t in enumerate(above)
                                                                  if not t.startswith(("from ", "import ", "#"))
                                                                  and t), len(above)) + 1])
                if not reason:
                    refused.append(f"{where}: say why in a comment (CLI edge: TensorFlow; or the optional dependency)")
    assert not refused, "\n".join(refused)
