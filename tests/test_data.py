import pickle
import random

import pytest

from nanocodegen.data import (
    BatchStream,
    EpisodeStream,
    TaskData,
    TokenizedTask,
    assemble,
    fitted,
    sample_failures,
    shard,
    tokenize_tasks,
    without_addresses,
)
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


def toy_tasks(n=40, seed=0) -> list[TokenizedTask]:
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(5, 50) for _ in range(k)]
    return [TokenizedTask(prompt=ids(rng.randint(3, 9)), solution=ids(rng.randint(2, 6)),
                          failures=[(ids(3), ids(2)) for _ in range(rng.randint(0, 3))]) for _ in range(n)]


def test_batch_stream_resumes_where_it_stopped():
    make = lambda: BatchStream(EpisodeStream(toy_tasks(), 1, 0.6, 64), batch_size=4, seed=1, bucket=3)
    a = make()
    first = [next(a) for _ in range(5)]  # mid-window: 5 is not a multiple of the 3 batches a window holds
    state = pickle.loads(pickle.dumps(a.state_dict()))  # plain data, as saved in train_state.pt
    rest = [next(a) for _ in range(40)]  # crosses several passes over the 40 tasks
    b = make()
    b.load_state_dict(state)
    assert [next(b) for _ in range(40)] == rest
    assert all(len(batch) == 4 for batch in first + rest)
    assert all([len(x) for x, _ in batch] == sorted(len(x) for x, _ in batch) for batch in rest)


def test_shard_gives_each_episode_to_one_rank_and_micro_batch():
    batch = [([i] * (i + 1), [i]) for i in range(11)]
    parts = [shard(batch, rank, 3, 2) for rank in range(3)]
    seen = sorted(ep[1][0] for rank in parts for micro in rank for ep in micro)
    assert seen == list(range(11))
    assert all(len(rank) == 2 and all(micro for micro in rank) for rank in parts)
    assert [sum(len(m) for m in rank) for rank in parts] == [4, 4, 3]


def test_feedback_keeps_no_object_addresses():
    text = "wrong_output: result = <list_reverseiterator object at 0x7f3a2c5e1b80>"
    assert without_addresses(text) == "wrong_output: result = <list_reverseiterator object at 0x...>"
    assert without_addresses("wrong_output: result = 0x10") == "wrong_output: result = 0x10"  # a value, not an address
