"""The house has no import cycles: every module of the library imports on its own, and the
graph of who imports whom (at the top of a file or inside a function) has no loop."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mini_llm", "tokenizer", "training")
ENTRY_POINTS = ("train", "evaluate", "generate")


def library_modules():
    """Dotted names of every module in the packages, plus the root entry scripts."""
    names = list(ENTRY_POINTS)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.startswith("test_"):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def module_path(name):
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(name, known):
    """The library modules `name` imports anywhere in its file (`from a.b import c` counts as
    a.b.c when that is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(module_path(name).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
    return {m for m in found if m in known and m != name}


def find_cycle(graph):
    """One import loop as a list of modules [a, b, ..., a], or None (depth-first search)."""
    state = {}                                       # name -> "open" on the stack | "done"

    def visit(name, stack):
        state[name] = "open"
        for child in sorted(graph[name]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state:
                loop = visit(child, stack + [child])
                if loop:
                    return loop
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            loop = visit(name, [name])
            if loop:
                return loop
    return None


def test_find_cycle_sees_a_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_anywhere():
    known = set(library_modules())
    graph = {name: imported_modules(name, known) for name in known}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_imports_alone():
    """Each module imported first, with no other library module loaded before it (one
    interpreter; the library's modules are dropped from sys.modules between imports)."""
    script = (
        "import importlib, sys\n"
        f"names = {library_modules()!r}\n"
        f"packages = {PACKAGES + ENTRY_POINTS!r}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in packages]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        print(f'{name}: {type(e).__name__}: {e}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
