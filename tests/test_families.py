"""Tests for nanocodegen.families: answers come from running solutions, splits stay apart, files are fresh."""

import ast
import itertools
import random
import re
import string

import pytest

from nanocodegen.families import (
    FAMILIES,
    REFERENCE_BUILTINS,
    SPLIT_BUCKETS,
    generate_tasks,
    iter_train_tasks,
    make_task,
    run_reference,
    shipped_split,
    split_of,
)
from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK, packaged_data, read_tasks

SPLITS = tuple(SPLIT_BUCKETS)
SEED_PROMPTS = {prompt for prompt, _ in TASK_BANK}


@pytest.fixture(scope="module")
def tasks_by_split():
    return {split: generate_tasks(split, 12, seed=7) for split in SPLITS}


@pytest.fixture(scope="module")
def train_stream():
    return list(itertools.islice(iter_train_tasks(seed=3), 6000))


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex matching any rendering of `template`, capturing each field's text by name."""
    parts: list[str] = []
    seen: set[str] = set()
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(f"(?P={field})" if field in seen else f"(?P<{field}>.+?)")
            seen.add(field)
    return re.compile("".join(parts))


def test_there_are_enough_families_in_every_tier():
    assert len(FAMILIES) >= 20
    tiers = [f.tier for f in FAMILIES.values()]
    assert set(tiers) == {1, 2, 3}
    tier3 = [f for f in FAMILIES.values() if f.tier == 3]
    conventions = [f for f in tier3 if f.kind == "convention"]
    assert 0.25 <= len(conventions) / len(tier3) <= 0.45  # about a third
    assert all(f.tier == 3 for f in FAMILIES.values() if f.kind == "convention")


def test_every_family_with_three_phrasings_holds_one_out():
    for f in FAMILIES.values():
        if len(f.phrasings) >= 3:
            assert f.held_out is not None and 0 <= f.held_out < len(f.phrasings), f.name


@pytest.mark.parametrize("split", SPLITS)
def test_every_family_makes_tasks_whose_expected_is_the_solutions_output(tasks_by_split, split):
    tasks = tasks_by_split[split]
    assert {t.family for t in tasks} == set(FAMILIES)
    for t in tasks:
        assert t.split == split and t.tier == FAMILIES[t.family].tier
        assert t.id.startswith(f"synthetic/{split}/{t.family}/")
        assert run_reference(t.solution) == t.expected, t.id


def test_ids_are_unique_and_values_distinct_within_a_split(tasks_by_split):
    for tasks in tasks_by_split.values():
        assert len({t.id for t in tasks}) == len(tasks)
        assert len({(t.family, t.solution) for t in tasks}) == len(tasks)


def test_solutions_are_short_canonical_and_use_the_conventions(tasks_by_split, train_stream):
    for t in itertools.chain(train_stream, *tasks_by_split.values()):
        for program in [t.solution, *t.distractors]:
            tree = ast.parse(program)
            assert ast.unparse(tree) == program, program  # one canonical style
            assert len(program) <= 120 and program.count("\n") <= 4, program
            assert "result" in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}, program
            for node in ast.walk(tree):
                assert not isinstance(node, ast.Import | ast.ImportFrom), program
                assert not (isinstance(node, ast.Attribute) and node.attr.startswith("_")), program
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id in REFERENCE_BUILTINS, program
        assert len(t.prompt) <= 110, t.prompt


def test_splits_are_disjoint_in_family_and_values(tasks_by_split):
    # Distinct values give distinct programs, so (family, program) identifies a draw across readings too.
    def draws(tasks):
        return {(t.family, p) for t in tasks for p in [t.solution, *t.distractors]}

    for a, b in itertools.combinations(SPLITS, 2):
        assert not draws(tasks_by_split[a]) & draws(tasks_by_split[b]), (a, b)


def test_split_membership_is_a_stable_hash():
    # Pinned: sha256 of the family and values, never hash(). If this changes, every split changes.
    pinned = [split_of("sum_list", {"xs": [i]}) for i in range(12)]
    assert pinned == ["train", "train", "test", "train", "train", "train", "val", "train", "val", "test",
                      "train", "val"]  # fmt: skip
    counts = {s: 0 for s in SPLITS}
    for i in range(3000):
        counts[split_of("power", {"a": i, "b": 2})] += 1
    assert 0.75 < counts["train"] / 3000 < 0.85 and counts["test"] > 200 and counts["val"] > 200


def test_held_out_phrasings_never_reach_train(tasks_by_split, train_stream):
    held = {f"{f.name}/{f.held_out}" for f in FAMILIES.values() if f.held_out is not None}
    assert not held & {t.phrasing for t in itertools.chain(tasks_by_split["train"], train_stream)}
    shown = {t.phrasing for t in tasks_by_split["val"] + tasks_by_split["test"] + shipped_split("test")}
    assert held & shown  # and they do appear where they should


def test_the_train_stream_stays_in_train(train_stream):
    assert {t.family for t in train_stream} == set(FAMILIES)
    for t in train_stream[:2000]:
        assert t.split == "train"
        assert run_reference(t.solution) == t.expected


def test_no_task_repeats_a_seed_prompt_or_solution(tasks_by_split, train_stream):
    for t in itertools.chain(train_stream, *tasks_by_split.values()):
        assert t.prompt not in SEED_PROMPTS
        assert t.solution not in SEED_SOLUTIONS


def test_every_seed_prompt_is_a_family_phrasing_with_the_same_answer():
    for (prompt, expected), seed_solution in zip(TASK_BANK, SEED_SOLUTIONS, strict=True):
        answers = []
        for f in FAMILIES.values():
            if len(f.solutions) > 1:
                continue
            for template in f.phrasings:
                match = _template_regex(template).fullmatch(prompt)
                if match is None:
                    continue
                try:
                    program = f.solutions[0].format(**match.groupdict())
                except KeyError:  # the phrasing does not name every value the solution needs
                    continue
                try:
                    answers.append((f.name, program, run_reference(program)))
                except Exception:  # a loose template (`Return {expr}`) also matches prompts it cannot solve
                    continue
        assert any(out == expected for _, _, out in answers), (prompt, answers)
        assert any(program == seed_solution for _, program, _ in answers), (prompt, answers)


def test_convention_tasks_have_distractors_that_print_something_else(tasks_by_split):
    every = [t for tasks in tasks_by_split.values() for t in tasks]
    convention = [t for t in every if FAMILIES[t.family].kind == "convention"]
    assert convention
    for t in convention:
        assert 1 <= len(t.distractors) <= 2
        outputs = {run_reference(d) for d in t.distractors}
        assert t.expected not in outputs and len(outputs) == len(t.distractors), t.id

    # Each reading is wanted somewhere, so no convention can be learnt from the prompt alone.
    def shape(program):  # the program with its values blanked out
        return re.sub(r"\[[^\]]*\]|-?\d+", "#", program)

    for f in FAMILIES.values():
        if f.kind == "convention":
            assert len({shape(t.solution) for t in convention if t.family == f.name}) >= 2, f.name


def test_the_prompt_does_not_depend_on_the_wanted_reading():
    rng = random.Random(5)
    for f in FAMILIES.values():
        if f.kind != "convention":
            continue
        made = 0
        while made < 20:
            params = f.draw(rng)
            if params is None:
                continue
            phrasing = rng.randrange(len(f.phrasings))
            versions = [make_task(f, params, phrasing, r, "t", "test") for r in range(len(f.solutions))]
            if None in versions:
                assert all(v is None for v in versions)
                continue
            made += 1
            assert len({v.prompt for v in versions}) == 1
            assert len({v.expected for v in versions}) == len(f.solutions)


def test_generation_is_deterministic():
    assert generate_tasks("test", 3, seed=11) == generate_tasks("test", 3, seed=11)
    assert generate_tasks("test", 3, seed=11) != generate_tasks("test", 3, seed=12)
    a = list(itertools.islice(iter_train_tasks(seed=1), 200))
    b = list(itertools.islice(iter_train_tasks(seed=1), 200))
    assert a == b


def test_generating_one_family_matches_its_part_of_all():
    some = generate_tasks("val", 4, seed=2, families=["power", "average"])
    every = generate_tasks("val", 4, seed=2)
    assert some == [t for t in every if t.family in ("power", "average")]


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of"):
        generate_tasks("dev", 1, seed=0)
    with pytest.raises(ValueError, match="unknown families"):
        generate_tasks("test", 1, seed=0, families=["nope"])
    with pytest.raises(ValueError, match="too few distinct values"):
        generate_tasks("test", 10_000, seed=0, families=["string_length"])


@pytest.mark.parametrize("split", ["val", "test"])
def test_shipped_files_equal_a_fresh_regeneration(split):
    shipped = read_tasks(packaged_data(f"synthetic_{split}.jsonl"))
    assert shipped == shipped_split(split), "run `python -m nanocodegen.families --write` and commit"
    assert 200 <= len(shipped) <= 320
