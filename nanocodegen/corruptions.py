"""Corruptions: realistic wrong versions of a task's reference solution, for training repair episodes.

A repair episode shows the model a wrong attempt, the verifier's feedback and then a right program. The
wrong attempts come from here: each kind imitates a slip a small code model makes.

    syntax          a dropped bracket or quote, a missing colon or comma, `=` for `==`, `fro` for `for`,
                    a lost indent; kept only when `ast.parse` rejects it
    wrong_builtin   max/min, sum/len, sorted/reversed, upper/lower, append/extend, index/count swapped
    off_by_one      a range bound, slice bound or index moved by one; an inclusive stop's `+ 1` forgotten or
                    an exclusive stop given one; `<` for `<=` and the like
    wrong_operator  `+`/`-`, `*`/`**`, `//`/`/`, `%` for `//`, a flipped parity test, a reversed comparison
    wrong_name      a misspelled name (NameError) or the wrong variable, e.g. the wrong loop variable
    wrong_literal   a value from the prompt miscopied: a digit off, letters swapped, an item dropped
    no_result       the answer left in `results`, printed, returned or not assigned at all
    distractor      the task's other readings (tier-3 conventions) and other plausible wrong programs

All kinds but `syntax` edit one node of the solution's AST and unparse it, so string contents are never
touched by accident and the code keeps the families' canonical style; `syntax` edits the token stream.
Nothing here is executed: a corruption can happen to be right (a miscopied 3 that does not matter), so
the training pipeline runs each one through the sandboxed verifier and drops those that pass.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import tokenize
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from nanocodegen.tasks import Task

KINDS = (
    "syntax",
    "wrong_builtin",
    "off_by_one",
    "wrong_operator",
    "wrong_name",
    "wrong_literal",
    "no_result",
    "distractor",
)


@dataclass(frozen=True)
class Corruption:
    kind: str  # one of KINDS
    code: str


def corrupt(task: Task, rng: random.Random, n: int) -> list[Corruption]:
    """Up to `n` distinct wrong versions of `task.solution`, mixing kinds; deterministic given `rng`.

    Kinds take turns in a random order, so a small `n` gets a random spread of kinds; fewer than `n`
    come back when the solution offers fewer edits.
    """
    pools = {kind: edits for kind, edits in _edits(task).items() if edits}
    kinds = list(pools)
    rng.shuffle(kinds)
    seen = {task.solution}
    out: list[Corruption] = []
    while kinds and len(out) < n:
        for kind in list(kinds):
            if len(out) == n:
                break
            code = _take(pools[kind], rng, seen)
            if code is None:
                kinds.remove(kind)
                continue
            seen.add(code)
            out.append(Corruption(kind, code))
    return out


# An edit is a deferred corruption: building every candidate would waste time, so sites are listed
# cheaply and only the edits drawn are applied.
Edit = Callable[[], "str | None"]


def _take(pool: list[Edit], rng: random.Random, seen: set[str]) -> str | None:
    """Apply randomly drawn edits of the pool until one gives a new program; None when it runs dry."""
    while pool:
        code = pool.pop(rng.randrange(len(pool)))()
        if code is not None and code not in seen:
            return code
    return None


def _edits(task: Task) -> dict[str, list[Edit]]:
    source = task.solution
    tree = ast.parse(source)
    nodes = list(ast.walk(tree))
    # Sites are found on this tree, so node identities tell their context apart.
    callees = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    negated = {id(n.operand) for n in nodes if isinstance(n, ast.UnaryOp)}  # the 3 of -3 is not a literal
    return {
        "syntax": _syntax_edits(source),
        "wrong_builtin": _ast_edits(source, nodes, _wrong_builtin),
        "off_by_one": _ast_edits(source, nodes, _off_by_one),
        "wrong_operator": _ast_edits(source, nodes, _wrong_operator),
        "wrong_name": _ast_edits(source, nodes, _wrong_name(_bound_names(nodes), callees)),
        "wrong_literal": _ast_edits(source, nodes, _wrong_literal(task.prompt, negated)),
        "no_result": _ast_edits(source, nodes, _no_result(tree.body[-1])),
        "distractor": [lambda d=d: d for d in task.distractors],
    }


# --- AST edits ---------------------------------------------------------------------------------------------
# A site function looks at one node and returns the ways to change it: each takes the node (from a fresh
# parse) and changes it in place (returning None) or returns the node to put in its place.

NodeChange = Callable[[ast.AST], "ast.AST | None"]


def _ast_edits(source: str, nodes: list[ast.AST], site: Callable[[ast.AST], list[NodeChange]]) -> list[Edit]:
    return [_apply(source, i, change) for i, node in enumerate(nodes) for change in site(node)]


def _apply(source: str, index: int, change: NodeChange) -> Edit:
    def edit() -> str:
        tree = ast.parse(source)  # a fresh tree: cheaper than deepcopy, and ast.walk order is the same
        node = list(ast.walk(tree))[index]
        new = change(node)
        if new is not None:
            _replace(tree, node, new)
        return ast.unparse(tree)

    return edit


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                value[[v is old for v in value].index(True)] = new
                return
    raise AssertionError("node to replace not found in its own tree")


def _int_of(node: ast.AST) -> int | None:
    """The value of an int literal, `-3` included (a unary minus on a constant); None otherwise."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_of(node.operand)
        return None if inner is None else -inner
    return None


def _int_node(value: int) -> ast.AST:
    return ast.Constant(value) if value >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-value))


def _to_int(value: int) -> NodeChange:
    return lambda node: _int_node(value)


def _set(attr: str, value: object) -> NodeChange:
    def change(node: ast.AST) -> None:
        setattr(node, attr, value)

    return change


_BUILTIN_SWAPS = {
    "max": "min", "min": "max", "sum": "len", "len": "sum", "sorted": "reversed", "reversed": "sorted",
}  # fmt: skip
_METHOD_SWAPS = {"upper": "lower", "lower": "upper", "append": "extend", "index": "count", "count": "index"}


def _wrong_builtin(node: ast.AST) -> list[NodeChange]:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _BUILTIN_SWAPS:
        return [lambda n: setattr(n.func, "id", _BUILTIN_SWAPS[n.func.id])]
    if isinstance(node, ast.Attribute) and node.attr in _METHOD_SWAPS:
        return [_set("attr", _METHOD_SWAPS[node.attr])]
    return []


_BOUND_SWAPS: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}


def _off_by_one(node: ast.AST) -> list[NodeChange]:
    changes: list[NodeChange] = []
    bounds: list[ast.AST] = []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        bounds = list(node.args)
    elif isinstance(node, ast.Slice):
        bounds = [b for b in (node.lower, node.upper) if b is not None]
    elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
        bounds = [node.slice] if _int_of(node.slice) is not None else []
    for k, bound in enumerate(bounds):
        value = _int_of(bound)
        if value is None:
            continue
        for new in (value - 1, value + 1):
            changes.append(_off_by_one_bound(type(node), k, new))
    if isinstance(node, ast.Call) and bounds:
        # the stop of `range(a, b + 1)` (the prompt said "through b") or of `range(a, b)` ("up to b")
        stop = bounds[-1]
        if isinstance(stop, ast.BinOp) and isinstance(stop.op, ast.Add) and _int_of(stop.right) == 1:
            changes.append(_set_stop(lambda stop: stop.left))
        elif _int_of(stop) is not None:
            changes.append(_set_stop(lambda stop: ast.BinOp(stop, ast.Add(), ast.Constant(1))))
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            if type(op) in _BOUND_SWAPS:
                changes.append(_swap_compare(k, _BOUND_SWAPS[type(op)]))
    return changes


def _off_by_one_bound(kind: type, k: int, new: int) -> NodeChange:
    def change(node: ast.AST) -> None:
        if kind is ast.Call:
            node.args[k] = _int_node(new)
        elif kind is ast.Slice:
            field = [f for f in ("lower", "upper") if getattr(node, f) is not None][k]
            setattr(node, field, _int_node(new))
        else:
            node.slice = _int_node(new)

    return change


def _set_stop(new: Callable[[ast.AST], ast.AST]) -> NodeChange:
    def change(node: ast.AST) -> None:
        node.args[-1] = new(node.args[-1])

    return change


def _swap_compare(k: int, op: type) -> NodeChange:
    def change(node: ast.AST) -> None:
        node.ops[k] = op()

    return change


_OPERATOR_SWAPS: dict[type, tuple[type, ...]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.Pow, ast.Add),
    ast.Pow: (ast.Mult,),
    ast.FloorDiv: (ast.Div,),
    ast.Div: (ast.FloorDiv,),
    ast.Mod: (ast.FloorDiv,),
}
_COMPARE_FLIPS: dict[type, type] = {
    ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.NotEq, ast.In: ast.NotIn,
}  # fmt: skip


def _wrong_operator(node: ast.AST) -> list[NodeChange]:
    if isinstance(node, ast.BinOp | ast.AugAssign):
        return [_set("op", op()) for op in _OPERATOR_SWAPS.get(type(node.op), ())]
    if not isinstance(node, ast.Compare):
        return []
    if _is_parity_test(node):
        return [lambda n: setattr(n.comparators[0], "value", 1 - n.comparators[0].value)]
    return [
        _swap_compare(k, _COMPARE_FLIPS[type(op)])
        for k, op in enumerate(node.ops)
        if type(op) in _COMPARE_FLIPS
    ]


def _is_parity_test(node: ast.Compare) -> bool:
    """`x % 2 == 0` or `x % 2 == 1`: the mistake there is the wrong remainder."""
    left = node.left
    return (
        isinstance(left, ast.BinOp)
        and isinstance(left.op, ast.Mod)
        and _int_of(left.right) == 2
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.Eq)
        and _int_of(node.comparators[0]) in (0, 1)
    )


def _bound_names(nodes: list[ast.AST]) -> list[str]:
    """Names the program itself binds (variables, loop targets), in first-seen order."""
    names = [n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return list(dict.fromkeys(names))


def _typos(name: str) -> list[str]:
    """Misspellings that are no other name: each raises NameError rather than meaning something else."""
    if len(name) == 1:
        candidates = ["i" if name != "i" else "j"]
    else:
        mid = len(name) // 2
        candidates = [
            name[:mid] + name[mid + 1 :],
            name[: mid - 1] + name[mid] + name[mid - 1] + name[mid + 1 :],
        ]
    return [c for c in candidates if c != name and not keyword.iskeyword(c) and not hasattr(builtins, c)]


def _wrong_name(bound: list[str], callees: set[int]) -> Callable[[ast.AST], list[NodeChange]]:
    """A typo in any name; or, where a variable is read, another of the program's variables."""

    def site(node: ast.AST) -> list[NodeChange]:
        if not isinstance(node, ast.Name):
            return []
        if isinstance(node.ctx, ast.Store) and node.id == "result":
            return []  # leaving `result` unset is its own kind, no_result
        others: list[str] = []
        if isinstance(node.ctx, ast.Load) and id(node) not in callees:
            others = [b for b in bound if b not in (node.id, "result")]
        return [_set("id", new) for new in _typos(node.id) + others]

    return site


def _wrong_literal(prompt: str, negated: set[int]) -> Callable[[ast.AST], list[NodeChange]]:
    """Edits to the literals the prompt shows: the solver copied a value from the prompt wrongly."""

    def site(node: ast.AST) -> list[NodeChange]:
        if id(node) in negated:
            return []
        value = _int_of(node)
        if value is not None and _shows(prompt, str(value)):
            return [_to_int(v) for v in _miscopied_int(value)]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and repr(node.value) in prompt:
            return [_set("value", s) for s in _miscopied_str(node.value)]
        if isinstance(node, ast.List) and len(node.elts) >= 3 and ast.unparse(node) in prompt:
            return [_drop_item(k) for k in range(len(node.elts))]
        return []

    return site


def _shows(prompt: str, number: str) -> bool:
    """Whether `number` appears in the prompt as a whole number (the 2 of `x % 2` is not in `[12]`)."""
    return re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", prompt) is not None


def _miscopied_int(value: int) -> list[int]:
    """Nearby values of the same sign, the first two digits swapped, and a lost minus sign."""
    out = [value + 1, value - 1]
    digits = str(abs(value))
    if len(digits) >= 2 and digits[0] != digits[1] and digits[1] != "0":
        swapped = int(digits[1] + digits[0] + digits[2:])
        out.append(swapped if value >= 0 else -swapped)
    out = [v for v in out if (v < 0) == (value < 0)]
    return out + [-value] if value < 0 else out


def _miscopied_str(s: str) -> list[str]:
    """One letter dropped, two swapped or one doubled, in the middle of the word."""
    if len(s) < 2:
        return []
    mid = len(s) // 2
    out = [
        s[:mid] + s[mid + 1 :],
        s[: mid - 1] + s[mid] + s[mid - 1] + s[mid + 1 :],
        s[:mid] + s[mid] + s[mid:],
    ]
    return [c for c in out if c != s]


def _drop_item(k: int) -> NodeChange:
    def change(node: ast.AST) -> None:
        del node.elts[k]

    return change


_RESULT_MISNAMES = ("results", "res", "answer")


def _no_result(last: ast.stmt) -> Callable[[ast.AST], list[NodeChange]]:
    """`result` renamed everywhere; or the final `result = ...` computed but not assigned."""

    def site(node: ast.AST) -> list[NodeChange]:
        if isinstance(node, ast.Module):
            return [_rename_result(new) for new in _RESULT_MISNAMES]
        if node is last and isinstance(node, ast.Assign) and [_name(t) for t in node.targets] == ["result"]:
            return [
                lambda n: ast.Expr(n.value),
                lambda n: ast.Expr(ast.Call(ast.Name("print"), [n.value], [])),
                lambda n: ast.Return(n.value),  # "Return ..." taken literally: 'return' outside function
            ]
        return []

    return site


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


def _rename_result(new: str) -> NodeChange:
    def change(module: ast.AST) -> None:
        for node in ast.walk(module):
            if isinstance(node, ast.Name) and node.id == "result":
                node.id = new

    return change


# --- syntax slips, on the token stream ------------------------------------------------------------------

_KEYWORD_TYPOS = {"for": "fro", "in": "ni", "if": "fi", "while": "whlie", "else": "esle", "not": "nto"}


def _syntax_edits(source: str) -> list[Edit]:
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    edits: list[Edit] = []
    for k, tok in enumerate(tokens):
        begin = starts[tok.start[0] - 1] + tok.start[1]
        end = starts[tok.end[0] - 1] + tok.end[1]
        following = tokens[k + 1].type if k + 1 < len(tokens) else None
        if tok.type == tokenize.OP and tok.string in (")", "]", "}"):
            edits.append(_splice(source, begin, end, ""))  # a closing bracket dropped
        elif tok.type == tokenize.OP and tok.string == ":" and following == tokenize.NEWLINE:
            edits.append(_splice(source, begin, end, ""))  # `for x in xs` without the colon
        elif tok.type == tokenize.OP and tok.string == ",":
            edits.append(_splice(source, begin, end, ""))  # a comma lost between items
        elif tok.type == tokenize.OP and tok.string == "==":
            edits.append(_splice(source, begin, end, "="))
        elif tok.type == tokenize.STRING:
            edits.append(_splice(source, end - 1, end, ""))  # the closing quote dropped
        elif tok.type == tokenize.NAME and tok.string in _KEYWORD_TYPOS:
            edits.append(_splice(source, begin, end, _KEYWORD_TYPOS[tok.string]))
        elif tok.type == tokenize.INDENT:
            edits.append(_splice(source, begin, end, ""))  # the loop body not indented
    return edits


def _splice(source: str, begin: int, end: int, text: str) -> Edit:
    def edit() -> str | None:
        code = source[:begin] + text + source[end:]
        try:
            with warnings.catch_warnings():  # `15.index` also warns "invalid decimal literal"
                warnings.simplefilter("ignore", SyntaxWarning)
                ast.parse(code)
        except SyntaxError:
            return code
        return None  # still valid Python (`['a' 'b']` concatenates): not a syntax slip

    return edit
