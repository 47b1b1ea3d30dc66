import random

import pytest

from nanocodegen.data import TaskData, assemble, fitted, sample_failures, tokenize_tasks
from nanocodegen.prompt import training_example
from nanocodegen.tasks import Task
from nanocodegen.tokenizer import CodeTokenizer

CONVENTION = Task(id="c", prompt="Return the position of 3 in [1, 3]", expected="1",
                  solution="result = [1, 3].index(3)", distractors=["result = [1, 3].index(3) + 1"])
PLAIN = Task(id="p", prompt="Return the sum of [1, 3]", expected="4", solution="result = sum([1, 3])")


@pytest.fixture(scope="module")
def tok():
    corpus = [CONVENTION.prompt, CONVENTION.solution, PLAIN.prompt, PLAIN.solution, "wrong_output: result = 2"]
    return CodeTokenizer.train(corpus * 20, vocab_size=300)


def tokenized(tok):
    data = [
        TaskData(CONVENTION, [(CONVENTION.distractors[0], "wrong_output: result = 2"),
                              ("result = [1, 3].index(1)", "wrong_output: result = 0")]),
        TaskData(PLAIN, [("result = len([1, 3])", "wrong_output: result = 2"),
                         ("result = sum([1, 3]", "syntax_error: '(' was never closed (line 1)")]),
    ]
    return tokenize_tasks(data, tok, feedback_budget=16)


def test_assembled_episode_equals_the_prompt_format(tok):
    conv, _ = tokenized(tok)
    failures = [(CONVENTION.distractors[0], "wrong_output: result = 2")]
    assert assemble(conv, [0]) == training_example(tok, CONVENTION.prompt, failures, CONVENTION.solution, 16)
    assert assemble(conv, []) == training_example(tok, CONVENTION.prompt, [], CONVENTION.solution, 16)


def test_fitted_drops_failures_until_the_episode_fits(tok):
    conv, _ = tokenized(tok)
    full = assemble(conv, [0, 1])[0]
    one = assemble(conv, [0])[0]
    assert fitted(conv, [0, 1], len(full))[0] == full
    assert fitted(conv, [0, 1], len(full) - 1)[0] == one


def test_underspecified_tasks_show_their_other_reading_first(tok):
    conv, plain = tokenized(tok)
    assert conv.distractor_count == 1 and plain.distractor_count == 0
    rng = random.Random(0)
    shown = [sample_failures(conv, rng, repair_fraction=0.5) for _ in range(200)]
    repairs = [s for s in shown if s]
    assert len(repairs) > 150 and all(s[0] == 0 for s in repairs)
    plain_shown = [sample_failures(plain, rng, repair_fraction=0.5) for _ in range(400)]
    assert 120 < sum(1 for s in plain_shown if s) < 280
