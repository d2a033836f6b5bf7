"""How the parts hold each other: no import circle among tickcast's modules.

Read from the installed sources (both distributions' halves of the tickcast
namespace) and, beside a checkout, the Cython sources in ext/. Every import
counts, those under TYPE_CHECKING and inside functions too: a circle hidden
from the interpreter is still one a reader has to hold in mind.
"""
import ast
import re
from pathlib import Path

import tickcast
import tickcast.client

EXT = Path(__file__).resolve().parent.parent / "ext"
_CIMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+\(?([\w, ]+)|c?import\s+([\w.]+))", re.M)


def modules() -> dict[str, Path]:
    found = {}
    # (an editable install's half is a finder, not a folder: the SDK's is found from its package)
    portions = {Path(p) for p in tickcast.__path__ if Path(p).is_dir()} | {Path(tickcast.client.__file__).parent.parent}
    for portion in portions:
        root = portion.parent
        for path in portion.rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    if EXT.is_dir():
        for path in EXT.rglob("*.pyx"):
            found[".".join(path.relative_to(EXT).with_suffix("").parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The tickcast modules ``name`` names in its imports. ``from P import m``
    of a submodule m is an import of P.m (as ``import P.m`` is), else of P."""
    named: list[tuple[str, list[str]]] = []
    if path.suffix == ".pyx":
        for m in _CIMPORT.finditer(path.read_text()):
            named.append((m.group(1) or m.group(3), [n.strip().split(" as ")[0] for n in (m.group(2) or "").split(",")
                                                   if n.strip()]))
    else:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named += [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                named.append((base, [a.name for a in node.names]))
    out = set()
    for module, names in named:
        if not module.startswith("tickcast"):
            continue
        subs = {f"{module}.{n}" for n in names} & known.keys()
        out |= subs if subs and len(subs) == len(names) else subs | {module}
    return {m for m in out if m in known and m != name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    known = modules()
    assert {"tickcast.server", "tickcast.client", "tickcast.connection"} <= known.keys()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph["tickcast.server"] and graph["tickcast.dialects.marketai"]     # the reader reads
    assert circles(graph) == []


def test_the_reader_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
