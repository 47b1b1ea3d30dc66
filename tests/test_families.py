"""Tests for nanocodegen.families: answers come from running solutions, splits stay apart, held-out phrasings
are new combinations of trained parts, solutions only copy values, files are fresh."""

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
    WORDS,
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
CASE_FAMILIES = {"change_case", "sort_words_case"}  # the only ones whose words are not all lower case


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


def test_each_family_holds_out_about_15_percent_of_its_combinations_and_trains_every_part():
    for f in FAMILIES.values():
        every = f.combinations
        assert len(every) >= 6 and len(set(map(f.template, every))) == len(every), f.name
        assert 0.10 <= len(f.held_out) / len(every) <= 0.20, f.name
        assert (0, 0, 0) not in f.held_out, f.name
        trained = f.phrasing_choices("train")
        assert set(trained) == set(every) - f.held_out and f.phrasing_choices("test") == every
        for k, parts in enumerate((f.leads, f.cores, f.tails)):
            assert {c[k] for c in trained} == set(range(len(parts))), (f.name, parts)
        assert all(lead.count("{}") == 1 for lead in f.leads), f.name


def test_held_out_combinations_are_stable():
    # Pinned: a stable hash of the ids, never hash(). If this changes, the held-out phrasings change.
    assert sorted(FAMILIES["sum_list"].held_out) == [(2, 2, 0), (2, 3, 0), (4, 3, 0)]
    assert FAMILIES["power"].template((0, 0, 0)) == "Return {a} ** {b}"


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
        assert len(t.prompt) <= 100, t.prompt


def _literals(program: str) -> list[object]:
    """The int and str constants of a program (the 3 of `-3` is 3: the minus is an operator)."""
    return [n.value for n in ast.walk(ast.parse(program)) if isinstance(n, ast.Constant)]


def _shows(prompt: str, value: object) -> bool:
    """Whether the prompt shows a value as the program writes it: a whole number, or a quoted string."""
    if isinstance(value, str):
        return repr(value) in prompt
    return re.search(rf"(?<![\w.]){value}(?![\w.])", prompt) is not None


def test_solutions_only_copy_values_from_the_prompt(tasks_by_split, train_stream):
    # Every literal is shown in the prompt or is a fixed constant of the family: nothing is computed.
    for t in itertools.chain(train_stream, *tasks_by_split.values()):
        constants = FAMILIES[t.family].constants
        for program in [t.solution, *t.distractors]:
            for value in _literals(program):
                assert type(value) in (int, str), program
                assert value in constants or _shows(t.prompt, value), (t.prompt, program, value)


def test_lists_are_short_and_words_come_from_the_vocabulary(tasks_by_split, train_stream):
    """Strings are words of the list or made-up lower-case words (no 'y', so vowel counts are unambiguous)."""
    vocabulary = set(WORDS)
    made_up = re.compile(r"[a-xz]{2,9}")
    for t in itertools.chain(train_stream, *tasks_by_split.values()):
        tree = ast.parse(t.solution)
        assert all(len(n.elts) <= 7 for n in ast.walk(tree) if isinstance(n, ast.List)), t.solution
        for value in _literals(t.solution):
            if isinstance(value, str) and value not in FAMILIES[t.family].constants and len(value) > 1:
                assert value.lower() in vocabulary or made_up.fullmatch(value.lower()), (t.family, value)
                assert value.islower() or t.family in CASE_FAMILIES, (t.family, value)


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
    held = {f.phrasing_id(c) for f in FAMILIES.values() for c in f.held_out}
    train = list(itertools.chain(tasks_by_split["train"], train_stream))
    assert not held & {t.phrasing for t in train} and not any(t.held_out for t in train)
    shown = tasks_by_split["val"] + tasks_by_split["test"]
    assert all(t.held_out == (t.phrasing in held) for t in shown)
    assert {t.family for t in shown if t.held_out} == set(FAMILIES)  # and they appear where they should


def test_the_train_stream_uses_every_trained_combination(train_stream):
    used = {t.phrasing for t in train_stream}
    for f in FAMILIES.values():
        assert {f.phrasing_id(c) for c in f.phrasing_choices("train")} <= used, f.name


@pytest.mark.parametrize("split", ["val", "test"])
def test_about_15_percent_of_a_shipped_split_uses_held_out_phrasings(split):
    tasks = shipped_split(split)
    assert 0.10 <= sum(t.held_out for t in tasks) / len(tasks) <= 0.20


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
            for combination in f.combinations:
                match = _template_regex(f.template(combination)).fullmatch(prompt)
                if match is None:
                    continue
                try:
                    program = f.solutions[0].format(**match.groupdict())
                except KeyError:  # the phrasing does not name every value the solution needs
                    continue
                try:
                    answers.append((f.name, combination, program, run_reference(program)))
                except Exception:  # a loose template (`Return {expr}`) also matches prompts it cannot solve
                    continue
        assert any(out == expected for *_, out in answers), (prompt, answers)
        # the seed's structure is trained: never a held-out combination
        assert any(program == seed_solution and combination == (0, 0, 0) for _, combination, program, _ in answers)


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
            phrasing = rng.choice(f.combinations)
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
        generate_tasks("test", 10_000, seed=0, families=["divide"])


@pytest.mark.parametrize("split", ["val", "test"])
def test_shipped_files_equal_a_fresh_regeneration(split):
    shipped = read_tasks(packaged_data(f"synthetic_{split}.jsonl"))
    assert shipped == shipped_split(split), "run `python -m nanocodegen.families --write` and commit"
    assert 200 <= len(shipped) <= 320
