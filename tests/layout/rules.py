"""The layout rules of docs/architecture.md, read from the code's own syntax trees (no module is
imported). Each function returns the violations it finds, one line each, so a failing test
prints exactly what broke and where; `python -m tests.layout.rules` prints them all."""

from __future__ import annotations

import ast
import collections
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Lower layers first. A package may import only packages of a strictly lower rank (and
# itself); pangu and kuafu share a rank, so neither may import the other.
RANKS = {"base": 0, "zhongkui": 1, "nuwa": 2, "pangu": 3, "kuafu": 3, "fuxi": 4,
         "cli": 5, "jobs": 5}
PACKAGES = tuple(RANKS)

MODULE_LINES_MAX = 800  # lines in one module
ACTOR_PUBLIC_METHODS_MAX = 30  # public methods of one Ray actor class

# What a core/ module may not import: Ray, the network, processes, threads, files and clocks
# come in from the shell, passed as values (time and rng are arguments).
CORE_FORBIDDEN_MODULES = {
    "ray", "socket", "ssl", "asyncio", "selectors", "subprocess", "multiprocessing",
    "threading", "concurrent", "os", "shutil", "tempfile", "pathlib", "glob", "io", "time",
    "random", "secrets", "uuid", "signal", "fcntl", "mmap", "http", "urllib", "logging",
}
CORE_FORBIDDEN_CALLS = {"open", "input", "print"}
# Besides the standard library, a core may use its package's errors, the base error tree and
# base.limits (plain declarations), and these libraries, which compute on values and do no I/O.
CORE_PURE_LIBRARIES = {"pydantic", "yaml"}

# Limit names: a module-level constant whose name ends so is a named limit and is defined once.
LIMIT_SUFFIXES = ("_S", "_MAX", "_BYTES", "_BYTES_MAX", "_TRIES", "_TIMEOUT")


def modules(packages=PACKAGES):
    """(module name, path, tree) of every module of the given packages (tests excluded)."""
    out = []
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path, ast.parse(path.read_text(), str(rel))))
    return out


def _known(name: str, known: set[str]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def imports(mod: str, path: pathlib.Path, tree: ast.AST, known: set[str]):
    """Every (imported module, line) of one module, including imports inside functions; a
    ``from pkg import name`` that names a submodule counts as importing that submodule."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names]
            if not all(sub in known for sub in subs):
                out.append((target, node.lineno))  # names defined in the module (or package)
            out.extend((sub, node.lineno) for sub in subs if sub in known)
    return out


def graph(mods=None):
    mods = mods if mods is not None else modules()
    known = {m for m, _, _ in mods}
    edges = collections.defaultdict(dict)  # module -> {imported module: line}
    for mod, path, tree in mods:
        for target, line in imports(mod, path, tree, known):
            k = _known(target, known)
            if k and k != mod:
                edges[mod].setdefault(k, line)
    return mods, edges


def _top(mod: str) -> str:
    return mod.split(".")[0]


def layer_violations(mods=None) -> list[str]:
    """Rule 1: an import from a package to one of the same or a higher rank."""
    mods, edges = graph(mods)
    paths = {m: p for m, p, _ in mods}
    out = []
    for mod, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            a, b = _top(mod), _top(target)
            if a != b and RANKS[b] >= RANKS[a]:
                out.append(f"{paths[mod].relative_to(ROOT)}:{line}: {a} imports {target} "
                           f"({b} is not below {a})")
    return out


def cycles(mods=None) -> list[list[str]]:
    """Rule 1: the import cycles (strongly connected components of more than one module),
    counting imports inside functions. A package's __init__ re-exporting its own modules
    is not a cycle edge from them back to it."""
    mods, edges = graph(mods)
    pkgs = {m for m, p, _ in mods if p.name == "__init__.py"}
    adj = {m: [t for t in edges.get(m, {}) if not (t in pkgs and m.startswith(t + "."))]
           for m, _, _ in mods}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        # Tarjan's algorithm, iterative (module graphs can be deep).
        work = [(v, iter(adj[v]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(adj[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for m in adj:
        if m not in index:
            strong(m)
    return sorted(out)


def core_violations(mods=None) -> list[str]:
    """Rule 2: a module under <pkg>/core/ imports only the standard library (minus Ray,
    sockets, files, clocks and randomness) and core modules of its own package."""
    mods = mods if mods is not None else modules()
    known = {m for m, _, _ in mods}
    out = []
    for mod, path, tree in mods:
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] != "core":
            continue
        own_core = f"{parts[0]}.core"
        rel = path.relative_to(ROOT)
        for target, line in imports(mod, path, tree, known):
            top = target.split(".")[0]
            if top == "__future__" or target == own_core or target.startswith(own_core + "."):
                continue
            # base.hotspots: the one hot-spot detector, pure itself (issue 20 part 2)
            if target in (f"{parts[0]}.errors", "base.errors", "base.limits", "base.hotspots") \
                    or top in CORE_PURE_LIBRARIES:
                continue
            if top in RANKS or top in CORE_FORBIDDEN_MODULES or top not in sys.stdlib_module_names:
                out.append(f"{rel}:{line}: core module imports {target}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CORE_FORBIDDEN_CALLS):
                out.append(f"{rel}:{node.lineno}: core module calls {node.func.id}()")
    return out


def size_violations(mods=None) -> list[str]:
    """Rule 7: modules over MODULE_LINES_MAX lines; actor classes (decorated with ray.remote,
    or the class of a ``ray.remote(Cls)`` call) over ACTOR_PUBLIC_METHODS_MAX public methods."""
    mods = mods if mods is not None else modules()
    out = []
    for mod, path, tree in mods:
        rel = path.relative_to(ROOT)
        n = len(path.read_text().splitlines())
        if n > MODULE_LINES_MAX:
            out.append(f"{rel}: {n} lines (MODULE_LINES_MAX = {MODULE_LINES_MAX})")
        wrapped = {a.id for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and _is_ray_remote(node.func) for a in node.args if isinstance(a, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            actor = node.name in wrapped or any(
                _is_ray_remote(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list)
            if not actor:
                continue
            public = [f.name for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and not f.name.startswith("_")]
            if len(public) > ACTOR_PUBLIC_METHODS_MAX:
                out.append(f"{rel}:{node.lineno}: actor {node.name} has {len(public)} public "
                           f"methods (ACTOR_PUBLIC_METHODS_MAX = {ACTOR_PUBLIC_METHODS_MAX})")
    return out


def _is_ray_remote(f) -> bool:
    return isinstance(f, ast.Attribute) and f.attr == "remote" and \
        isinstance(f.value, ast.Name) and f.value.id == "ray"


# The one module that may reach Ray's private names (where Ray offers no public API); a Ray
# upgrade is checked there.
RAY_PRIVATE_HOME = "base/actors.py"


def private_violations(mods=None) -> list[str]:
    """Rule 8: a private name (one underscore, not a dunder) taken from another module:
    ``from m import _x``, or ``m._x`` where ``m`` is an imported module (ours or Ray's)."""
    mods = mods if mods is not None else modules()
    known = {m for m, _, _ in mods}
    out = []
    for mod, path, tree in mods:
        rel = path.relative_to(ROOT)
        if str(rel) == RAY_PRIVATE_HOME:
            out += [x for x in _private_in(tree, rel, known) if not _names_ray(x)]
            continue
        out += _private_in(tree, rel, known)
    return out


def _private_in(tree, rel, known) -> list[str]:
    """The private names one module takes from others."""
    out = []
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if _private(a.name):
                    out.append(f"{rel}:{node.lineno}: imports private {a.name} from "
                               f"{node.module}")
            if node.module and any(_private(p) for p in node.module.split(".")):
                out.append(f"{rel}:{node.lineno}: imports from private module {node.module}")
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:
                    aliases[a.asname or a.name] = sub
        elif isinstance(node, ast.Import):
            for a in node.names:
                if any(_private(p) for p in a.name.split(".")):
                    out.append(f"{rel}:{node.lineno}: imports private module {a.name}")
                aliases[a.asname or a.name.split(".")[0]] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            out.append(f"{rel}:{node.lineno}: reaches {node.value.id}.{node.attr}")
    return out


def _names_ray(violation: str) -> bool:
    return " ray." in violation or " ray._" in violation


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def limit_duplicates(mods=None) -> list[str]:
    """Rule 8: a named limit (a module-level UPPER_CASE constant ending in _S, _MAX, ...)
    assigned in more than one module."""
    mods = mods if mods is not None else modules()
    where = collections.defaultdict(list)
    for mod, path, tree in mods:
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) and node.value else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper() and t.id.endswith(LIMIT_SUFFIXES) \
                        and not isinstance(node.value, ast.Name):  # `X = other.X` re-exports
                    where[t.id].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return [f"{name} is defined {len(places)} times: {', '.join(places)}"
            for name, places in sorted(where.items()) if len(places) > 1]


def report() -> dict[str, list]:
    mods = modules()
    return {"upward or sideways imports": layer_violations(mods),
            "import cycles": cycles(mods),
            "core purity": core_violations(mods),
            "sizes": size_violations(mods),
            "private names": private_violations(mods),
            "limits defined more than once": limit_duplicates(mods)}


if __name__ == "__main__":
    for title, items in report().items():
        print(f"{title}: {len(items)}")
        for item in items:
            print("   ", item if isinstance(item, str) else " <-> ".join(item))
