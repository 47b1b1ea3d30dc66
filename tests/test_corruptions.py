"""Tests for nanocodegen.corruptions. Corruptions are never executed here: that is the verifier's job."""

import ast
import collections
import random

import pytest

from nanocodegen.corruptions import KINDS, Corruption, corrupt
from nanocodegen.families import FAMILIES, generate_tasks
from nanocodegen.tasks import Task, seed_tasks


@pytest.fixture(scope="module")
def tasks():
    return generate_tasks("val", 4, seed=5) + seed_tasks()


@pytest.fixture(scope="module")
def corrupted(tasks):
    return [(t, corrupt(t, random.Random(i), 8)) for i, t in enumerate(tasks)]


def _strings(code: str) -> collections.Counter:
    return collections.Counter(
        n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )


def test_corruptions_are_distinct_wrong_versions_of_the_solution(corrupted):
    for task, cs in corrupted:
        assert 1 <= len(cs) <= 8
        codes = [c.code for c in cs]
        assert len(set(codes)) == len(codes) and task.solution not in codes
        assert all(isinstance(c, Corruption) and c.kind in KINDS for c in cs)


def test_every_task_gets_several_kinds(corrupted):
    for task, cs in corrupted:
        assert len({c.kind for c in cs}) >= 3, task.id


def test_corruption_is_deterministic_per_rng_seed(tasks):
    for t in tasks[::7]:
        assert corrupt(t, random.Random(3), 6) == corrupt(t, random.Random(3), 6)
    differs = [corrupt(t, random.Random(1), 6) != corrupt(t, random.Random(2), 6) for t in tasks]
    assert sum(differs) > len(tasks) // 2


def test_each_kind_appears_across_the_families(tasks):
    seen: collections.Counter = collections.Counter()
    for i, t in enumerate(tasks):
        seen.update(c.kind for c in corrupt(t, random.Random(i), 50))
    assert set(seen) == set(KINDS), set(KINDS) - set(seen)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # `15.index` warns before it fails
def test_syntax_slips_do_not_parse_and_the_rest_do(tasks):
    for i, t in enumerate(tasks):
        for c in corrupt(t, random.Random(i), 50):
            if c.kind == "syntax":
                with pytest.raises(SyntaxError):
                    ast.parse(c.code)
            else:
                ast.parse(c.code)


def test_ast_edits_leave_string_contents_alone(tasks):
    # Only a miscopied literal may change a string; the other AST kinds must not touch string contents.
    for i, t in enumerate(tasks):
        for c in corrupt(t, random.Random(i), 50):
            if c.kind in ("wrong_builtin", "off_by_one", "wrong_operator", "wrong_name", "no_result"):
                assert _strings(c.code) == _strings(t.solution), (t.solution, c)


def test_corruptions_keep_the_canonical_style(tasks):
    for i, t in enumerate(tasks):
        for c in corrupt(t, random.Random(i), 50):
            if c.kind != "syntax":
                assert ast.unparse(ast.parse(c.code)) == c.code


def test_distractors_come_back_as_their_own_kind():
    task = next(t for t in generate_tasks("test", 3, seed=0) if FAMILIES[t.family].kind == "convention")
    got = [c.code for c in corrupt(task, random.Random(0), 100) if c.kind == "distractor"]
    assert sorted(got) == sorted(task.distractors)


def test_specific_slips_look_like_the_real_thing():
    task = Task(id="t", prompt="Return the even numbers in [4, 7, 10]", expected="[4, 10]",
                solution="result = [x for x in [4, 7, 10] if x % 2 == 0]")  # fmt: skip
    codes = {(c.kind, c.code) for c in corrupt(task, random.Random(0), 200)}
    assert ("syntax", "result = [x for x in [4, 7, 10] if x % 2 = 0]") in codes
    assert ("syntax", "result = [x fro x in [4, 7, 10] if x % 2 == 0]") in codes
    assert ("wrong_operator", "result = [x for x in [4, 7, 10] if x % 2 == 1]") in codes
    assert ("wrong_name", "result = [i for x in [4, 7, 10] if x % 2 == 0]") in codes
    assert ("wrong_literal", "result = [x for x in [4, 8, 10] if x % 2 == 0]") in codes
    assert ("no_result", "results = [x for x in [4, 7, 10] if x % 2 == 0]") in codes
    # the 2 of `x % 2` is not shown in the prompt as a number, so it is not "miscopied"
    assert ("wrong_literal", "result = [x for x in [4, 7, 10] if x % 3 == 0]") not in codes


def test_range_stops_lose_or_gain_the_plus_one():
    # "from 3 through 7" is `range(3, 7 + 1)`: the slip is the + 1 forgotten, or added to an exclusive stop
    def off_by_one(solution):
        task = Task(id="t", prompt="p", expected="", solution=solution)
        return {c.code for c in corrupt(task, random.Random(0), 200) if c.kind == "off_by_one"}

    assert "result = list(range(3, 7))" in off_by_one("result = list(range(3, 7 + 1))")
    assert "result = list(range(7))" in off_by_one("result = list(range(7 + 1))")
    assert "result = list(range(3, 8 + 1))" in off_by_one("result = list(range(3, 8))")


def test_n_limits_the_count_and_zero_gives_none(tasks):
    assert corrupt(tasks[0], random.Random(0), 0) == []
    assert len(corrupt(tasks[0], random.Random(0), 2)) == 2
