"""The package's layers, checked from the source with ``ast`` (nothing is imported, every import statement counts,
those inside functions too): a module imports only from its own package or from a layer below it.

See docs/architecture.md for what each layer is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import flashvsr_q

# lowest first; the packages on one line are siblings and must not import each other
LAYERS: list[set[str]] = [
    {"errors", "logs"},
    {"files", "shipped", "progress"},
    {"video"},
    {"attention"},
    {"model"},
    {"data"},
    {"quant", "infer"},
    {"checkpoints"},
    {"eval"},
    {"train"},
    {"tasks"},
    {"app"},
    {"cli"},
    {"api"},  # upscale and quantize of the public API
    {""},  # flashvsr_q/__init__.py: the public API, above everything
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PACKAGE = Path(flashvsr_q.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """``flashvsr_q.quant.ptq`` -> ``quant``; ``flashvsr_q`` -> ``""`` (the public API)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported flashvsr_q module, line, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            # `from flashvsr_q import tasks` imports the submodule flashvsr_q.tasks
            targets = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in in_function) for t in targets if t.split(".")[0] == "flashvsr_q"]
    return found


def all_imports() -> list[tuple[str, str, int, bool]]:
    return [(module_name(path), target, line, local) for path in sorted(PACKAGE.rglob("*.py"))
            for target, line, local in imports(path)]


def test_every_package_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LEVEL), f"packages without a layer: {sorted(units - set(LEVEL))}"


def test_no_upward_or_sibling_import():
    wrong = []
    for module, target, line, _ in all_imports():
        src, dst = unit_of(module), unit_of(target)
        if src != dst and LEVEL[dst] >= LEVEL[src]:
            wrong.append(f"{module}:{line} imports {target} ({'sibling' if LEVEL[dst] == LEVEL[src] else 'upward'})")
    assert not wrong, "\n".join(wrong)


def test_function_local_imports_say_why():
    """Only optional dependencies are imported inside functions, each with its reason on the line."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        unexplained += [f"{module_name(path)}:{line}" for _, line, local in imports(path)
                        if local and "#" not in lines[line - 1]]
    assert not unexplained, unexplained


if __name__ == "__main__":  # the counts quoted in docs/architecture.md
    rows = all_imports()
    cross = [r for r in rows if unit_of(r[0]) != unit_of(r[1])]
    print(f"{len(rows)} imports of flashvsr_q modules, {len(cross)} across packages, "
          f"{sum(r[3] for r in cross)} of those inside functions")
