"""The package's imports run one way: base modules (labels, config, errors, ...) -> data -> models -> metrics ->
engine -> study -> semisup -> report -> cli / demo. A module may import its own layer and the ones before it."""

import ast
from pathlib import Path

import cityscapes_lab

ORDER = ["data", "models", "metrics", "engine", "study", "semisup", "report"]
TOP = {"cli", "demo", "__main__", "__init__"}


def layer(module: str) -> int:
    """0: the base modules; 1..7: the packages in pipeline order; 8: the command line and the demo."""
    first = module.split(".")[0]
    if first in TOP:
        return len(ORDER) + 1
    return ORDER.index(first) + 1 if first in ORDER else 0


def imports(root: Path):
    """(module, imported module) for every relative import of the package."""
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        module, package = ".".join(parts), list(parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                yield module, ".".join(base + ([node.module] if node.module else [node.names[0].name]))


def test_no_module_imports_a_later_layer():
    root = Path(cityscapes_lab.__file__).parent
    edges = list(imports(root))
    assert len(edges) > 100  # the walk saw the package
    upward = sorted({f"{a} -> {b}" for a, b in edges if layer(b) > layer(a)})
    assert upward == []


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.py").write_text("from ..engine.train import train\n")
    assert [(a, b) for a, b in imports(tmp_path) if layer(b) > layer(a)] == [("data.x", "engine.train")]
