"""The house in figures (issue 17's before/after table): largest module and function, module-level
import cycles, option idioms and hand-typed CLI defaults. Static: reads the source, imports nothing.

    python benchmarks/house_figures.py            # a Markdown table row per figure
    python benchmarks/house_figures.py --json

Module cycles count every ``import``/``from ... import`` of a spkemb module, lazy (function-level)
ones too, because a lazy import is still a dependency a reader must follow; a cycle is a strongly
connected component of more than one module (Tarjan). An import of a module's own parent package
(``from spkemb import __version__`` in ``spkemb.embeddings.store``) is no edge: Python has imported
the parent before the module in any case. Option idioms: option classes (dataclasses
named ``*Options``/``*Config``) that are not :class:`spkemb.options.Options`, and the checking
methods (``validate``/``check``/``resolved``) next to ``__post_init__``. Core messages naming a CLI
flag: string constants (f-string parts too) of a ``raise X(...)``, a ``warnings.warn(...)`` or an
``InputError``/``WorkError``/``ValueError`` built anywhere, in ``spkemb/`` outside ``spkemb/cli/``, that
hold a ``--flag`` (the core names option fields in backticks; the CLI shows its flags); and, apart,
such constants elsewhere in the core outside docstrings and ``add_argument`` calls (a message built
in pieces, a field -> flag table).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "spkemb"


def _docstring_lines(tree: ast.Module) -> int:
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                n += (body[0].end_lineno or body[0].lineno) - body[0].lineno + 1
    return n


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1 if body else 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _trees() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PKG.rglob("*.py"))}


def module_graph(trees: dict[str, tuple[Path, ast.Module]] | None = None) -> dict[str, set[str]]:
    """``module -> spkemb modules it imports`` (a ``from pkg import name`` of a submodule counts as
    that submodule; of anything else, as the package)."""
    trees = trees or _trees()
    graph: dict[str, set[str]] = {m: set() for m in trees}
    for mod, (path, tree) in trees.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("spkemb")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                if not base.startswith("spkemb"):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in trees else base)
            for t in targets:
                while t not in trees and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in trees and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
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
    return sorted(out)


def _is_options_class(node: ast.ClassDef) -> bool:
    return bool(re.search(r"(Options|Config)$", node.name)) and any(
        (isinstance(d, ast.Name) and d.id == "dataclass")
        or (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "dataclass")
        for d in node.decorator_list
    )


def _option_idioms(trees: dict[str, tuple[Path, ast.Module]]) -> tuple[list[str], list[str]]:
    not_options: list[str] = []
    checkers: list[str] = []
    for mod, (_path, tree) in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ClassDef) and _is_options_class(node)):
                continue
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if not any(b.endswith("Options") for b in bases):
                not_options.append(f"{mod}.{node.name}")
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in ("validate", "check", "resolved"):
                    checkers.append(f"{mod}.{node.name}.{item.name}")
    return not_options, checkers


def _states_a_rule(text: str) -> bool:
    return not any(c.isdigit() for c in text) or "--" in text


def hand_typed_defaults() -> list[str]:
    """``[default: ...]`` written as a plain string in ``spkemb/cli/`` (an f-string's literal part and
    a docstring are not counted). A default that states a rule rather than a value (no digit in it, as
    in "chosen by the NME criterion", or computed from another option, "2/3 of --segment") cannot be
    rendered from a dataclass and is not counted."""
    found = []
    for path in sorted((PKG / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        in_fstrings |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "[default:" in node.value
                and id(node) not in in_fstrings
                and not _states_a_rule(node.value.split("[default:", 1)[1].split("]", 1)[0])
            ):
                found.append(f"{path.name}:{node.lineno}")
    return found


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_MESSAGE_CALLS = ("InputError", "WorkError", "ValueError", "warn")


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def core_flag_strings(root: Path = PKG) -> tuple[list[str], list[str]]:
    """``path:line --flag ...`` of each string constant naming a ``--flag`` in the core (``root`` outside its
    ``cli/``): (in messages, elsewhere). Docstrings, ``add_argument`` calls (a script's own argparse)
    and comments are not counted."""
    in_messages: list[str] = []
    elsewhere: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
        messages: set[int] = set()
        for node in ast.walk(tree):
            call = node.exc if isinstance(node, ast.Raise) else node
            if isinstance(call, ast.Call) and (isinstance(node, ast.Raise) or _callee(call) in _MESSAGE_CALLS):
                messages |= {id(n) for n in ast.walk(call)}
            elif isinstance(call, ast.Call) and _callee(call) == "add_argument":
                skip |= {id(n) for n in ast.walk(call)}
        rel = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and FLAG.search(node.value):
                where = f"{rel}:{node.lineno} {' '.join(sorted(set(FLAG.findall(node.value))))}"
                if id(node) in messages:
                    in_messages.append(where)
                elif id(node) not in skip:
                    elsewhere.append(where)
    return in_messages, elsewhere


def _command_options(path: Path) -> dict[str, str | None]:
    """``parameter -> its own help text`` of the command function in ``path``, for the parameters
    it declares itself (``= typer.Option(...)``); a shared ``Annotated`` alias maps to ``None``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    args = func.args.args
    defaults = [None] * (len(args) - len(func.args.defaults)) + list(func.args.defaults)
    out: dict[str, str | None] = {}
    for a, d in zip(args, defaults, strict=True):
        if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "Option":
            helps = [k.value for k in d.keywords if k.arg == "help"]
            out[a.arg] = ast.unparse(helps[0]) if helps else ""
        else:
            out[a.arg] = None
    return out


def duplicated_training_options() -> tuple[int, int]:
    """(options declared by both pretrain and finetune, of those with different help texts)."""
    pre = _command_options(PKG / "cli" / "pretrain.py")
    fin = _command_options(PKG / "cli" / "finetune.py")
    both = [k for k in pre if k in fin and pre[k] is not None and fin[k] is not None]
    return len(both), sum(pre[k] != fin[k] for k in both)


def figures() -> dict[str, Any]:
    trees = _trees()
    modules = []
    functions = []
    for mod, (path, tree) in trees.items():
        text = path.read_text(encoding="utf-8")
        modules.append((text.count("\n") - _docstring_lines(tree), mod))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((_body_lines(node), f"{mod}.{node.name}"))
    not_options, checkers = _option_idioms(trees)
    hand = hand_typed_defaults()
    cyc = cycles(module_graph(trees))
    flagged, flagged_elsewhere = core_flag_strings()
    modules.sort(reverse=True)
    functions.sort(reverse=True)
    return {
        "largest_module": f"{modules[0][1]} ({modules[0][0]} lines)",
        "largest_function": f"{functions[0][1]} ({functions[0][0]} lines)",
        "module_cycles": len(cyc),
        "modules_in_cycles": sum(len(c) for c in cyc),
        "cycles": [" <-> ".join(c) for c in cyc],
        "option_classes_not_Options": not_options,
        "option_check_methods": checkers,
        "options_declared_twice_and_drifting": duplicated_training_options(),
        "hand_typed_cli_defaults": len(hand),
        "hand_typed_cli_defaults_at": hand,
        "core_messages_naming_a_cli_flag": len(flagged),
        "core_messages_naming_a_cli_flag_at": flagged,
        "core_strings_naming_a_cli_flag_elsewhere": len(flagged_elsewhere),
        "core_strings_naming_a_cli_flag_elsewhere_at": flagged_elsewhere,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    f = figures()
    if args.json:
        print(json.dumps(f, indent=1))
        return
    for k, v in f.items():
        print(f"| {k} | {v if not isinstance(v, list) else (len(v), v)} |")


if __name__ == "__main__":
    main()
