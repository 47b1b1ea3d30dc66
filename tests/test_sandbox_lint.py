"""The source policy on its own (no sandbox): what each policy refuses, and the message it gives."""

import _ast

import pytest

from nanocodegen.sandbox_child import AVAILABLE_MODULES
from nanocodegen.sandbox_lint import check


def lint(code: str, policy: str = "task") -> str:
    return check(code, compile(code, "<code>", "exec", _ast.PyCF_ONLY_AST), policy, AVAILABLE_MODULES)


@pytest.mark.parametrize(
    "code, task, tests",
    [
        ("result = sorted([3, 1, 2])", "", ""),
        ("import math", "import statements are not allowed (line 1)", ""),
        ("from typing import List", "import statements are not allowed (line 1)", ""),
        ("import os", "import statements are not allowed (line 1)", "module os is not available (line 1)"),
        ("import collections.abc", "import statements are not allowed (line 1)", ""),
        ("from . import x", "import statements are not allowed (line 1)", "relative imports are not allowed (line 1)"),
        ("result = eval('1')", "eval() is not allowed (line 1)", ""),
        ("result = exec('1')", "exec() is not allowed (line 1)", "exec() is not allowed (line 1)"),
        ("x = 1\ny = ().__class__.__base__", "attribute __class__ is not allowed (line 2)",
         "attribute __class__ is not allowed (line 2)"),
        ("y = '{0.__globals__}'.format(f)", "attribute __globals__ is not allowed in a format string (line 1)",
         "attribute __globals__ is not allowed in a format string (line 1)"),
        ("y = '{:{0.gi_frame}}'.format(1, g)", "attribute gi_frame is not allowed in a format string (line 1)",
         "attribute gi_frame is not allowed in a format string (line 1)"),
        ("y = '{0[__builtins__]}'.format(d)", "attribute __builtins__ is not allowed in a format string (line 1)",
         "attribute __builtins__ is not allowed in a format string (line 1)"),
        ("y = '{0.real} {1} {{x.__class__}}'", "", ""),  # plain attributes; a doubled brace is not a field
        ("y = '{{{0.__class__}}}'", "attribute __class__ is not allowed in a format string (line 1)",
         "attribute __class__ is not allowed in a format string (line 1)"),
        ("y = 'the __class__ attribute'", "", ""),  # a dunder outside any field
        ("# -*- coding: latin-1 -*-\nx = 1", "coding declarations other than utf-8 are not allowed (line 1)",
         "coding declarations other than utf-8 are not allowed (line 1)"),
        ("#!/usr/bin/env python\n# vim: set fileencoding=UTF8 :\nx = 1", "", ""),
        ("x = 1\n# coding: latin-1", "", ""),  # not a declaration on line 2 after code on line 1
        ("def f():\n    global y\n    y = 1", "", ""),
        ("class C:\n    __slots__ = ('a',)\n    def __init__(self):\n        super().__init__()", "", ""),
        ("result = __name__", "", ""),
        ("result = __spec__", "name __spec__ is not allowed (line 1)", "name __spec__ is not allowed (line 1)"),
        ("match x:\n    case C(__dict__=d):\n        pass", "attribute __dict__ is not allowed (line 2)",
         "attribute __dict__ is not allowed (line 2)"),
        ("d = {**a, 'k': 1}", "", ""),  # a None key in the tree
    ],
)
def test_policies(code, task, tests):
    assert (lint(code, "task"), lint(code, "tests")) == (task, tests)


def test_the_first_refusal_by_position_is_reported():
    assert lint("a = b.__dict__\nimport os") == "attribute __dict__ is not allowed (line 1)"
    assert lint("x = open\ny = eval") == "open() is not allowed (line 1)"


def test_a_deep_tree_is_walked_without_recursion():
    code = "x = " + "[" * 90 + "]" * 90 + "\n" + "y = " + "-" * 900 + "z.__class__"
    assert lint(code) == "attribute __class__ is not allowed (line 2)"


def test_an_unknown_policy_is_an_error():
    with pytest.raises(AssertionError, match="unknown policy"):
        lint("x = 1", "strict")
