"""Layer 1, the source policy: a lint over the program's syntax tree, with messages fit for the model.

It keeps generated programs inside a small, task-shaped language and says clearly what strayed; it is
not the security boundary (the OS layer is: see nanocodegen/sandbox.py), so it stops only what is cheap
to recognise in the source. It runs inside the sandbox's checker (sandbox_checker.py, a process confined
like a run's child), on a tree the checker parsed itself, so a parser or compiler bomb costs the checker
its time or memory limit, never the caller. Standard library only, and `_ast` rather than `ast` (which
would add `enum` and more to every process forked from the server).

Two policies:
  task   the original sketch's, for programs judged by their `result`: no import statements, none of
         FORBIDDEN_NAMES, and no escape paths (below).
  tests  for programs judged by unit tests (HumanEval): imports of the modules the sandbox provides
         (sandbox_child.AVAILABLE_MODULES) only, and `eval`, which HumanEval's reference solutions use;
         otherwise as `task`.
Escape paths refused by both: dunder attributes other than a few plain ones (`().__class__`,
`f.__globals__`, `sum.__self__`, `x.__reduce_ex__`, ...), frame, code, generator and traceback
internals (`gi_frame`, `f_back`, `tb_frame`, ...), dunder names other than `__name__` (`__builtins__`,
`__loader__`, ...), the same attributes inside format strings (`"{0.__class__}".format(x)` walks them
without an attribute node), and coding declarations other than UTF-8. Identifiers are checked after the
parser's NFKC normalisation, so `ｅｖａｌ` is `eval`.
"""

from __future__ import annotations

import _ast

POLICIES = ("task", "tests")

# Builtins that reach outside the task's little language: code execution, introspection, I/O.
FORBIDDEN_NAMES = frozenset(
    {"exec", "eval", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
     "locals", "vars", "breakpoint", "input", "help", "exit", "quit"}
)  # fmt: skip
ALLOWED_IN_TESTS = frozenset({"eval"})  # HumanEval/160's reference solution is `return eval(expression)`
# Attributes that walk from an object to frames, code, globals or builtins (the classic escapes).
FORBIDDEN_ATTRIBUTES = frozenset(
    {"gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
     "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "tb_frame",
     "tb_next", "co_code", "co_consts", "co_names"}
)  # fmt: skip
# Dunder attributes that are plain data or the usual constructor call; every other dunder is refused
# (__class__, __subclasses__, __globals__, __builtins__, __self__, __code__, __dict__, ...).
ALLOWED_DUNDER_ATTRIBUTES = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def with_line(text: str, line: int | None) -> str:
    return f"{text} (line {line})" if line else text


def check(source: str, tree: _ast.Module, policy: str, modules: frozenset[str]) -> str:
    """The first (by position) construct `policy` refuses, as feedback text; "" if none.

    `tree` is `source` parsed (compile(..., _ast.PyCF_ONLY_AST)); `modules` are the importable ones."""
    assert policy in POLICIES, f"unknown policy {policy!r}; choose from {POLICIES}"
    cookie = _coding_cookie_violation(source)
    if cookie:
        return cookie
    forbidden_names = FORBIDDEN_NAMES - ALLOWED_IN_TESTS if policy == "tests" else FORBIDDEN_NAMES
    found: list[tuple[int, int, tuple[int, int], str]] = []
    stack: list = [tree]
    while stack:  # iterative: a deep tree cannot overflow the stack here
        node = stack.pop()
        kind = type(node)
        text = ""
        if kind is _ast.Name:
            if node.id in forbidden_names:
                text = f"{node.id}() is not allowed"
            # `__name__` reads, and dunder assignments in class bodies (__slots__, __hash__ = None), are
            # fine; reads of __builtins__, __loader__, __spec__, __class__ ... are escapes.
            elif is_dunder(node.id) and node.id != "__name__" and type(node.ctx) is not _ast.Store:
                text = f"name {node.id} is not allowed"
            elif node.id == "__builtins__":
                text = "name __builtins__ is not allowed"
        elif kind is _ast.Attribute:
            text = _attribute_violation(node.attr)
        elif kind is _ast.Constant:
            if type(node.value) is str and "{" in node.value:
                text = _format_violation(node.value)
        elif kind is _ast.Import or kind is _ast.ImportFrom:
            text = _import_violation(node, policy, modules)
        elif kind is _ast.MatchClass:  # `case C(__class__=x)` reads attributes too
            text = next(filter(None, map(_attribute_violation, node.kwd_attrs)), "")
        if text:
            # By where it starts, then where it ends: in `().__class__.__base__` every attribute node
            # starts at the `(`, and the first one a reader meets is the one that ends first.
            line = getattr(node, "lineno", 0)
            end = (getattr(node, "end_lineno", 0) or 0, getattr(node, "end_col_offset", 0) or 0)
            found.append((line, getattr(node, "col_offset", 0), end, with_line(text, line)))
        if kind is _ast.Name or kind is _ast.Constant:
            continue
        fields = _CHILD_FIELDS.get(kind)
        if fields is None:
            fields = _CHILD_FIELDS[kind] = _child_fields(node)
        for name in fields:
            value = getattr(node, name, None)
            if type(value) is list:
                if value and type(value[0]) is not str:  # Global/Nonlocal names are strings
                    stack.extend(v for v in value if v is not None)  # Dict keys hold None for **d
            elif value is not None:
                stack.append(value)
    return min(found)[3] if found else ""


# Per node type, the fields that can hold nodes: not the expression context, and not the ones that hold
# identifiers, numbers or strings (a field holds one kind of value in every node of its type).
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}
_SCALARS = (str, int, float, complex, bytes)


def _child_fields(node) -> tuple[str, ...]:
    return tuple(
        name for name in node._fields if name != "ctx" and not isinstance(getattr(node, name, None), _SCALARS)
    )


def _import_violation(node, policy: str, modules: frozenset[str]) -> str:
    if policy == "task":
        return "import statements are not allowed"
    if isinstance(node, _ast.ImportFrom):
        if node.level:
            return "relative imports are not allowed"
        names = [node.module or ""]
    else:
        names = [alias.name for alias in node.names]
    for name in names:
        if name.partition(".")[0] not in modules:  # a submodule of an available package is available
            return f"module {name} is not available"
    return ""


def _attribute_violation(attr: str) -> str:
    if attr in FORBIDDEN_ATTRIBUTES or (is_dunder(attr) and attr not in ALLOWED_DUNDER_ATTRIBUTES):
        return f"attribute {attr} is not allowed"
    return ""


def _format_violation(text: str) -> str:
    """A refused attribute (or dunder index) in a replacement field of a would-be format string:
    "{0.__class__}", "{x.gi_frame.f_back}", "{0[__builtins__]}". Fields are read up to `}`, `!` or `:`;
    nested fields in a format spec start with their own `{` and are read in turn; `{{` is no field."""
    start = text.find("{")
    while start >= 0:
        if text.startswith("{{", start):  # an escaped brace, not a field
            start = text.find("{", start + 2)
            continue
        end = start + 1
        while end < len(text) and text[end] not in "}{!:":
            end += 1
        field = text[start + 1 : end]
        for sep in ".[":
            for part in field.split(sep)[1:]:
                name = part.split(".")[0].split("[")[0].rstrip("]")
                if _attribute_violation(name) or (sep == "[" and is_dunder(name)):
                    return f"attribute {name} is not allowed in a format string"
        start = text.find("{", start + 1)
    return ""


def _is_utf8(encoding: str) -> bool:
    name = encoding.lower().replace("_", "-")  # Python's own normalisation of a declared name
    return name in ("utf-8", "utf8", "u8", "utf") or name.startswith("utf-8-")


def _coding_cookie_violation(source: str) -> str:
    """A coding declaration (PEP 263, line 1 or 2) that names anything but UTF-8. The program is always
    read as UTF-8 (compile() of a str ignores the declaration), so another one could only make the code
    a reader sees differ from the code that runs."""
    for line_no, line in enumerate(source.split("\n", 2)[:2], start=1):
        stripped = line.lstrip(" \t\f")
        if not stripped.startswith("#"):
            if stripped.strip():
                break  # code on line 1: a declaration on line 2 would not count
            continue
        at = stripped.find("coding")
        while at >= 0:
            rest = stripped[at + 6 :]
            if rest[:1] in (":", "="):
                name = rest[1:].lstrip(" \t")
                end = 0
                while end < len(name) and (name[end].isalnum() or name[end] in "-_."):
                    end += 1
                if name[:end] and not _is_utf8(name[:end]):
                    return with_line("coding declarations other than utf-8 are not allowed", line_no)
                return ""
            at = stripped.find("coding", at + 1)
    return ""
