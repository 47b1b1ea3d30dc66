"""Synthetic task families: the synthetic benchmark suites and the model's training tasks.

    python -m nanocodegen.families            # list the families
    python -m nanocodegen.families --write    # regenerate nanocodegen/data/synthetic_{val,test}.jsonl

A *family* is one kind of task (sum a list, reverse a string, ...): a parameter generator drawing values
from a `random.Random`, several *phrasings* (prompt templates) and a reference solution template. A task
is one draw rendered with one phrasing; its `expected` is `str(result)` after actually running the
reference program, so a family cannot state a wrong answer.

Tiers: 1 = one step (like the sketch's seed tasks), 2 = two steps, a loop, a comprehension or a dict,
3 = hardest. Tier 3 has two kinds:

* "composition": several steps chained (filter + map + aggregate, a loop with an accumulator, a dict
  built then read).
* "convention": the prompt is honestly underspecified, as real tickets are. "The numbers between 3 and
  8" may include the ends or not; "the position of 7" may count from 0 or 1; "the average" may be a float,
  floored or rounded; "sort the words" may or may not ignore case. The family lists every reading as a
  program; per task the generator picks the wanted one at random, keeps the others in
  `Task.distractors`, and rejects draws where two readings print the same `str(result)`. The prompt is
  rendered from the values and the phrasing alone, so it cannot reveal the reading. Only the verifier's
  feedback on a wrong attempt (its output, never the expected value) lets a solver switch to another
  reading: this is the tier where retries must matter.

Code style is canonical across families, because the model learns from consistency: every solution is
its own `ast.unparse` (single-quoted strings, `[1, 2, 3]` spacing), leaves its answer in `result`, uses
`x` as the loop and comprehension variable and list comprehensions rather than generators, imports
nothing and calls only the builtins in `REFERENCE_BUILTINS`. Programs run as one module: globals and
locals are one namespace (a comprehension may read a variable the program set).

Splits are disjoint in values: a draw belongs to `train`, `val` or `test` by a stable hash (sha256, never
Python's `hash()`) of the family name and its parameters, and each split samples by rejection until the
hash falls in it, so no (family, values) pair is in two splits. Per family one phrasing is held out: it
appears in val and test only, never in train. No task in any split repeats a seed prompt or seed
solution, since the seed suite is a benchmark of its own.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import random
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK, Task, packaged_data, write_tasks

Params = dict[str, object]

# Draws fall in a split by hash bucket (0..99): 80% train, 10% val, 10% test.
SPLIT_BUCKETS: dict[str, range] = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}

# The shipped files: how many tasks per family, and the seed they are generated with.
SHIPPED_PER_FAMILY = {"val": 8, "test": 8}
SHIPPED_SEED = 0

# The builtins reference solutions may call; the sandbox must allow at least these.
REFERENCE_BUILTINS = (
    "dict", "int", "len", "list", "max", "min", "range", "round", "sorted", "str", "sum", "zip",
)  # fmt: skip

_SEED_PROMPTS = frozenset(prompt for prompt, _ in TASK_BANK)
_SEED_PROGRAMS = frozenset(SEED_SOLUTIONS)


class Raw(str):
    """A template value inserted as is (an operator, a word of the prompt); others are inserted as repr()."""

    __slots__ = ()


@dataclass(frozen=True)
class Family:
    """One kind of task.

    `draw` returns the parameters (None rejects the draw); `phrasings` and `solutions` are `str.format`
    templates over them. One solution for ordinary families; a convention family lists every reading.
    `held_out` indexes the phrasing kept out of train.
    """

    name: str
    tier: int
    draw: Callable[[random.Random], Params | None]
    phrasings: tuple[str, ...]
    solutions: tuple[str, ...]
    held_out: int | None = None

    @property
    def kind(self) -> str:
        if len(self.solutions) > 1:
            return "convention"
        return {1: "one-step", 2: "two-step", 3: "composition"}[self.tier]

    def phrasing_choices(self, split: str) -> tuple[int, ...]:
        """Indices of the phrasings a task of `split` may use."""
        every = tuple(range(len(self.phrasings)))
        return tuple(i for i in every if i != self.held_out) if split == "train" else every


_WORDS = """
    able acid aged also area army away baby back ball band bank base bath bear beat bell belt bend best bike
    bird bite blue boat body bold bone book boot born boss bowl bread brick bring brown build burn bush busy
    cake calm camp card care cart cash cast cave chair chalk cheap chess chief child chin city clay clean
    clock cloud coal coat code cold comb cook cool copy corn cost crab crane crew crop crowd cup cure dance
    dark dawn deal deep desk dial dice dish dock door dove draw dream dress drink drum duck dust eagle early
    earth east echo edge egg elbow empty engine extra fair fall farm fast fear feast fern field film find
    fire fish flag flame flat flock floor flour fog fold food foot fork form fox frame fresh frog fruit game
    gate gift girl glad glass glove goal goat gold golf good grape grass green grid grin ground group grow
    gull hair half hall hand harp hat hawk head heart heat hero hill hint home honey hook hope horn horse
    host hour house ice idea inch iron island jam jar jelly jet join joke juice jump kettle key kick kind
    king kite knee knife knot lake lamp land lane large leaf lemon lens letter light lime line lion list
    loaf lock long loop lucky lunch magic map maple march mask meal melon metal milk mind mint moon moss
    moth mouse mud music nail name nest net night noise north nose note novel number oak ocean olive onion
    orange oven owl page paint palm panda paper park party path peach pearl pen pencil pepper piano pig
    pilot pine pink pipe plant plate plum pond pool port pot power print prize pump quiet quilt rabbit radio
    rain rake river road robin rock roof room root rope rose round ruler sail salad salt sand scale school
    sea seed shade shape sheep shell ship shirt shoe shop silk silver sister skate sky sleep slide smile
    snail snake snow soap sock soft song soup south space spoon spring star stone storm straw street sugar
    summer sun swan table tail tea team tent test tiger time toast tomato tool tooth towel tower town toy
    train tree truck tulip turtle twig uncle unit valley van vase verse violin voice wagon walk wall water
    wave whale wheel wind window wing winter wolf wood wool word world worm yard year zebra zone
""".split()
_SHORT_WORDS = [w for w in _WORDS if len(w) <= 4]  # for dict keys and repeats, to keep programs short
_NO_Y_WORDS = [w for w in _WORDS if "y" not in w]  # "how many vowels" is unambiguous without 'y'
# Things to put a price on, for price_total.
_GOODS = "bun cake corn cup egg fig ham hat jam lamp lime milk nut oil pen pie plum rice soap tea".split()


# --- drawing helpers -------------------------------------------------------------------------------------


def _ints(rng: random.Random, lo: int, hi: int, n_lo: int = 3, n_hi: int = 8) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


def _distinct_ints(rng: random.Random, lo: int, hi: int, n_lo: int, n_hi: int) -> list[int]:
    return rng.sample(range(lo, hi + 1), rng.randint(n_lo, n_hi))


def _parity(rng: random.Random) -> tuple[Raw, int]:
    """("even", 0) or ("odd", 1): the word for the prompt and the remainder for `x % 2 == r`."""
    return (Raw("even"), 0) if rng.random() < 0.5 else (Raw("odd"), 1)


def _extreme(rng: random.Random, biggest: str, smallest: str) -> tuple[Raw, Raw]:
    """("max", biggest) or ("min", smallest): the builtin and the adjective naming it."""
    return (Raw("max"), Raw(biggest)) if rng.random() < 0.5 else (Raw("min"), Raw(smallest))


# --- tier 1: one step ------------------------------------------------------------------------------------


def _draw_sum_list(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -10, 30)}


def _draw_word(rng: random.Random) -> Params:
    return {"w": rng.choice(_WORDS)}


def _draw_reverse_string(rng: random.Random) -> Params | None:
    w = rng.choice(_WORDS)
    return None if w == w[::-1] else {"w": w}


def _draw_power(rng: random.Random) -> Params | None:
    b = rng.randint(2, 10)
    a = rng.randint(2, 99 if b == 2 else 50)
    return {"a": a, "b": b} if a**b <= 10**6 else None


def _draw_sort_list(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 20, 4, 8)
    return None if xs == sorted(xs) else {"xs": xs}


def _draw_max_or_min(rng: random.Random) -> Params:
    fn, adj = _extreme(rng, "largest", "smallest")
    a, b, c = rng.sample(range(-20, 100), 3)
    return {"fn": fn, "adj": adj, "a": a, "b": b, "c": c}


def _draw_repeat_string(rng: random.Random) -> Params:
    if rng.random() < 0.5:
        s = rng.choice(_SHORT_WORDS)
    else:
        s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 3)))
    return {"s": s, "n": rng.randint(2, 5)}


def _draw_range_list(rng: random.Random) -> Params:
    a = 0 if rng.random() < 0.3 else rng.randint(-5, 20)
    b = a + rng.randint(1, 8)
    # range(0, b) is written range(b), as a person would.
    return {"a": a, "b": b, "last": b - 1, "args": Raw(f"{b}" if a == 0 else f"{a}, {b}")}


def _draw_change_case(rng: random.Random) -> Params:
    w = rng.choice(_WORDS)
    if rng.random() < 0.5:
        return {"w": w, "case": Raw("upper"), "op": Raw("upper")}
    shown = w.upper() if rng.random() < 0.5 else w.capitalize()
    return {"w": shown, "case": Raw("lower"), "op": Raw("lower")}


def _draw_count_char(rng: random.Random) -> Params:
    w = rng.choice(_WORDS)
    c = rng.choice(w) if rng.random() < 0.85 else rng.choice(string.ascii_lowercase)
    return {"w": w, "c": c}


_ARITHMETIC_FORMS = (
    ("{a} * {b} + {c}", "Multiply {a} by {b}, then add {c}"),
    ("{a} * {b} - {c}", "Multiply {a} by {b}, then subtract {c}"),
    ("({a} + {b}) * {c}", "Add {a} and {b}, then multiply by {c}"),
    ("({a} - {b}) * {c}", "Subtract {b} from {a}, then multiply by {c}"),
)


def _draw_arithmetic(rng: random.Random) -> Params:
    values = {"a": rng.randint(1, 30), "b": rng.randint(2, 20), "c": rng.randint(2, 20)}
    expr, steps = rng.choice(_ARITHMETIC_FORMS)
    return {**values, "expr": Raw(expr.format(**values)), "steps": Raw(steps.format(**values))}


def _draw_divide(rng: random.Random) -> Params | None:
    b = rng.randint(2, 12)
    a = rng.randint(b + 1, 150)
    if a % b == 0:  # keep // apart from / and the remainder non-zero
        return None
    if rng.random() < 0.5:
        return {"a": a, "b": b, "op": Raw("//"), "what": Raw(f"{a} divided by {b}, rounded down")}
    return {"a": a, "b": b, "op": Raw("%"), "what": Raw(f"the remainder of {a} divided by {b}")}


_RELATIONS = {
    ">": "greater than",
    "<": "less than",
    ">=": "greater than or equal to",
    "<=": "less than or equal to",
    "==": "equal to",
}


def _draw_compare(rng: random.Random) -> Params:
    op = rng.choice(sorted(_RELATIONS))
    a = rng.randint(-20, 50)
    b = a if rng.random() < 0.25 else rng.randint(-20, 50)
    return {"a": a, "b": b, "op": Raw(op), "rel": Raw(_RELATIONS[op])}


def _draw_item_at(rng: random.Random) -> Params:
    xs = _ints(rng, -9, 30, 4, 8)
    i = -1 if rng.random() < 0.15 else rng.randrange(len(xs))
    return {"xs": xs, "i": i}


def _draw_string_slice(rng: random.Random) -> Params | None:
    w = rng.choice(_WORDS)
    if len(w) < 4:
        return None
    n = rng.randint(2, len(w) - 1)
    if rng.random() < 0.5:
        return {"w": w, "n": n, "end": Raw("first"), "part": Raw(f":{n}")}
    return {"w": w, "n": n, "end": Raw("last"), "part": Raw(f"-{n}:")}


# --- tier 2: two steps, a loop, a comprehension or a dict --------------------------------------------------


def _draw_squares(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -9, 12, 3, 6)}


def _draw_filter_parity(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 20, 4, 8)
    parity, r = _parity(rng)
    kept = [x for x in xs if x % 2 == r]
    return {"xs": xs, "parity": parity, "r": r} if 0 < len(kept) < len(xs) else None


def _draw_count_greater(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -9, 20, 4, 8), "t": rng.randint(-5, 15)}


def _draw_word_lengths(rng: random.Random) -> Params:
    return {"ws": rng.sample(_WORDS, rng.randint(3, 5))}


def _draw_zip_dict(rng: random.Random) -> Params:
    n = rng.randint(2, 4)
    return {"ks": rng.sample(_SHORT_WORDS, n), "vs": [rng.randint(0, 20) for _ in range(n)]}


def _draw_dict_get(rng: random.Random) -> Params:
    keys = rng.sample(_SHORT_WORDS, rng.randint(2, 4))
    return {"d": {k: rng.randint(0, 20) for k in keys}, "k": rng.choice(keys)}


def _draw_product(rng: random.Random) -> Params:
    return {"xs": [rng.choice((-3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9)) for _ in range(rng.randint(3, 5))]}


def _draw_sum_range(rng: random.Random) -> Params:
    a = rng.randint(0, 20)
    b = a + rng.randint(2, 50)
    return {"a": a, "b": b, "a1": a + 1, "m": b + 1}


def _draw_longest_word(rng: random.Random) -> Params | None:
    ws = rng.sample(_WORDS, rng.randint(3, 5))
    fn, adj = _extreme(rng, "longest", "shortest")
    lengths = sorted(len(w) for w in ws)
    unique = lengths[-1] != lengths[-2] if fn == "max" else lengths[0] != lengths[1]
    return {"ws": ws, "fn": fn, "adj": adj} if unique else None


def _draw_count_vowels(rng: random.Random) -> Params:
    return {"w": rng.choice(_NO_Y_WORDS)}


def _draw_spread(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -9, 30, 3, 6)}


# --- tier 3, compositions ----------------------------------------------------------------------------------


def _draw_filter_map_sum(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 15, 4, 7)
    parity, r = _parity(rng)
    kept = [x for x in xs if x % 2 == r]
    return {"xs": xs, "parity": parity, "r": r} if 0 < len(kept) < len(xs) else None


def _draw_extreme_of_filtered(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 30, 4, 8)
    parity, r = _parity(rng)
    fn, adj = _extreme(rng, "largest", "smallest")
    kept = [x for x in xs if x % 2 == r]
    pick = max if fn == "max" else min
    if not kept or pick(kept) == pick(xs):  # the filter must change the answer
        return None
    return {"xs": xs, "parity": parity, "r": r, "fn": fn, "adj": adj}


def _draw_price_total(rng: random.Random) -> Params:
    keys = rng.sample(_GOODS, 3)
    prices = {k: rng.randint(1, 9) for k in keys}
    return {"d": prices, "items": [rng.choice(keys) for _ in range(rng.randint(2, 4))]}


def _draw_running_total(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -5, 20, 3, 6)}


def _draw_count_above_average(rng: random.Random) -> Params | None:
    xs = _ints(rng, 0, 30, 4, 7)
    return None if len(set(xs)) == 1 else {"xs": xs}


def _draw_doubling_steps(rng: random.Random) -> Params:
    a = rng.randint(1, 20)
    return {"a": a, "b": rng.randint(a + 1, 500)}


def _draw_word_count_dict(rng: random.Random) -> Params | None:
    pool = rng.sample(_SHORT_WORDS, rng.randint(2, 3))
    ws = [rng.choice(pool) for _ in range(rng.randint(4, 6))]
    return {"ws": ws} if 1 < len(set(ws)) < len(ws) else None


def _draw_digit_sum(rng: random.Random) -> Params:
    return {"n": rng.randint(10, 99999)}


# --- tier 3, underspecified conventions --------------------------------------------------------------------


def _draw_between(rng: random.Random) -> Params:
    xs = _distinct_ints(rng, 0, 25, 5, 8)
    a, b = sorted(rng.sample(xs, 2)) if rng.random() < 0.7 else sorted(rng.sample(range(0, 26), 2))
    return {"xs": xs, "a": a, "b": b}


def _draw_position_of(rng: random.Random) -> Params:
    xs = _distinct_ints(rng, -5, 30, 4, 8)
    return {"xs": xs, "v": rng.choice(xs)}


def _draw_average(rng: random.Random) -> Params | None:
    # Lengths 4, 5 and 8 give short exact decimals; a fraction above .5 keeps float, floor and round apart.
    xs = [rng.randint(0, 30) for _ in range(rng.choice((4, 5, 8)))]
    return {"xs": xs} if sum(xs) % len(xs) * 2 > len(xs) else None


def _draw_sort_words_case(rng: random.Random) -> Params:
    ws = rng.sample(_WORDS, rng.randint(3, 5))
    for i in rng.sample(range(len(ws)), rng.randint(1, 2)):
        ws[i] = ws[i].capitalize()
    return {"ws": ws}


# --- the families ------------------------------------------------------------------------------------------
# Phrasing 0 of the first eight families is the structure of a seed prompt; those are never held out.

_FAMILY_LIST = (
    # tier 1
    Family(
        "sum_list", 1, _draw_sum_list,
        ("Return the sum of {xs}", "Add up the numbers in {xs}", "What is the total of {xs}?",
         "Compute the sum of the list {xs}"),
        ("result = sum({xs})",), held_out=3,
    ),
    Family(
        "reverse_string", 1, _draw_reverse_string,
        ("Return {w} reversed", "Reverse the string {w}", "Return {w} spelled backwards",
         "Write {w} back to front"),
        ("result = {w}[::-1]",), held_out=3,
    ),
    Family(
        "string_length", 1, _draw_word,
        ("Return the length of {w}", "How many characters are in {w}?", "Count the letters in {w}"),
        ("result = len({w})",), held_out=2,
    ),
    Family(
        "power", 1, _draw_power,
        ("Return {a} ** {b}", "Return {a} to the power of {b}", "Raise {a} to the power {b}",
         "What is {a} to the power {b}?"),
        ("result = {a} ** {b}",), held_out=3,
    ),
    Family(
        "sort_list", 1, _draw_sort_list,
        ("Return sorted({xs})", "Sort {xs} in ascending order", "Put the numbers {xs} in increasing order",
         "Return {xs} ordered from smallest to largest"),
        ("result = sorted({xs})",), held_out=3,
    ),
    Family(
        "max_or_min", 1, _draw_max_or_min,
        ("Return {fn}({a}, {b}, {c})", "Return the {adj} of {a}, {b} and {c}",
         "Find the {adj} number among {a}, {b} and {c}", "Which is the {adj}: {a}, {b} or {c}?"),
        ("result = {fn}({a}, {b}, {c})",), held_out=3,
    ),
    Family(
        "repeat_string", 1, _draw_repeat_string,
        ("Return {s} * {n}", "Repeat {s} {n} times", "Return the string {s} repeated {n} times",
         "Join {n} copies of {s} together"),
        ("result = {s} * {n}",), held_out=3,
    ),
    Family(
        "range_list", 1, _draw_range_list,
        ("Return list(range({args}))", "Return a list of the integers from {a} up to but not including {b}",
         "List the whole numbers from {a} through {last}"),
        ("result = list(range({args}))",), held_out=2,
    ),
    Family(
        "change_case", 1, _draw_change_case,
        ("Return {w} in {case} case", "Convert {w} to {case}case", "Return {w}.{op}()",
         "Write {w} in {case}-case letters"),
        ("result = {w}.{op}()",), held_out=3,
    ),
    Family(
        "count_char", 1, _draw_count_char,
        ("Count how many times {c} appears in {w}", "How many {c} characters are in {w}?",
         "Return {w}.count({c})", "Return the number of times {c} occurs in {w}"),
        ("result = {w}.count({c})",), held_out=3,
    ),
    Family(
        "arithmetic", 1, _draw_arithmetic,
        ("Return {expr}", "Compute {expr}", "{steps}", "Evaluate {expr}"),
        ("result = {expr}",), held_out=3,
    ),
    Family(
        "divide", 1, _draw_divide,
        ("Return {a} {op} {b}", "Return {what}", "What is {what}?"),
        ("result = {a} {op} {b}",), held_out=2,
    ),
    Family(
        "compare", 1, _draw_compare,
        ("Return {a} {op} {b}", "Is {a} {rel} {b}? Return True or False", "Return whether {a} is {rel} {b}",
         "Check whether {a} is {rel} {b}"),
        ("result = {a} {op} {b}",), held_out=3,
    ),
    Family(
        "item_at", 1, _draw_item_at,
        ("Return {xs}[{i}]", "Return the item at index {i} of {xs}",
         "What is the element at index {i} in {xs}?"),
        ("result = {xs}[{i}]",), held_out=2,
    ),
    Family(
        "string_slice", 1, _draw_string_slice,
        ("Return the {end} {n} letters of {w}", "Return {w}[{part}]", "Take the {end} {n} characters of {w}"),
        ("result = {w}[{part}]",), held_out=2,
    ),
    # tier 2
    Family(
        "squares", 2, _draw_squares,
        ("Return the squares of {xs}", "Square every number in {xs}",
         "Return a list with each number of {xs} squared"),
        ("result = [x ** 2 for x in {xs}]",), held_out=2,
    ),
    Family(
        "filter_parity", 2, _draw_filter_parity,
        ("Return the {parity} numbers in {xs}", "Keep only the {parity} numbers of {xs}",
         "Filter {xs} down to its {parity} numbers",
         "Which numbers in {xs} are {parity}? Return them as a list"),
        ("result = [x for x in {xs} if x % 2 == {r}]",), held_out=3,
    ),
    Family(
        "count_greater", 2, _draw_count_greater,
        ("How many numbers in {xs} are greater than {t}?",
         "Count the numbers in {xs} that are greater than {t}",
         "Return how many items of {xs} exceed {t}"),
        ("result = len([x for x in {xs} if x > {t}])",), held_out=2,
    ),
    Family(
        "word_lengths", 2, _draw_word_lengths,
        ("Return the length of each word in {ws}", "List the lengths of the words {ws}",
         "Return how many letters each word of {ws} has"),
        ("result = [len(x) for x in {ws}]",), held_out=2,
    ),
    Family(
        "zip_dict", 2, _draw_zip_dict,
        ("Make a dict mapping {ks} to {vs}", "Pair the keys {ks} with the values {vs} in a dict",
         "Return dict(zip({ks}, {vs}))", "Build a dictionary from the keys {ks} and the values {vs}"),
        ("result = dict(zip({ks}, {vs}))",), held_out=3,
    ),
    Family(
        "dict_get", 2, _draw_dict_get,
        ("Return the value for {k} in {d}", "Look up {k} in {d}", "Return {d}[{k}]",
         "What does {d} map {k} to?"),
        ("result = {d}[{k}]",), held_out=3,
    ),
    Family(
        "product", 2, _draw_product,
        ("Return the product of {xs}", "Multiply together all the numbers in {xs}",
         "Use a loop to multiply the numbers of {xs}"),
        ("result = 1\nfor x in {xs}:\n    result *= x",), held_out=2,
    ),
    Family(
        "sum_range", 2, _draw_sum_range,
        ("Return the sum of the integers from {a} to {b} inclusive",
         "Add up every whole number from {a} through {b}",
         "Return sum(range({a}, {m}))", "What is {a} + {a1} + ... + {b}?"),
        ("result = sum(range({a}, {m}))",), held_out=3,
    ),
    Family(
        "longest_word", 2, _draw_longest_word,
        ("Return the {adj} word in {ws}", "Which word in {ws} is the {adj}?",
         "Find the {adj} string in {ws}"),
        ("result = {fn}({ws}, key=len)",), held_out=2,
    ),
    Family(
        "count_vowels", 2, _draw_count_vowels,
        ("How many vowels are in {w}?", "Count the vowels in {w}", "Return the number of vowels in {w}"),
        ("result = len([x for x in {w} if x in 'aeiou'])",), held_out=2,
    ),
    Family(
        "spread", 2, _draw_spread,
        ("Return the difference between the largest and smallest numbers in {xs}",
         "How far apart are the biggest and smallest values in {xs}?", "Return max minus min of {xs}",
         "Subtract the minimum of {xs} from its maximum"),
        ("result = max({xs}) - min({xs})",), held_out=3,
    ),
    # tier 3, compositions
    Family(
        "filter_map_sum", 3, _draw_filter_map_sum,
        ("Return the sum of the squares of the {parity} numbers in {xs}",
         "Add up the squares of the {parity} numbers in {xs}",
         "Square each {parity} number in {xs} and return the total"),
        ("result = sum([x ** 2 for x in {xs} if x % 2 == {r}])",), held_out=2,
    ),
    Family(
        "extreme_of_filtered", 3, _draw_extreme_of_filtered,
        ("Return the {adj} {parity} number in {xs}",
         "Among the {parity} numbers of {xs}, which is the {adj}?",
         "Find the {adj} of the {parity} values in {xs}"),
        ("result = {fn}([x for x in {xs} if x % 2 == {r}])",), held_out=2,
    ),
    Family(
        "price_total", 3, _draw_price_total,
        ("Prices are {d}. Return the total cost of {items}",
         "Given the prices {d}, add up the cost of {items}",
         "With prices {d}, what do {items} cost altogether?"),
        ("result = 0\nfor x in {items}:\n    result += {d}[x]",), held_out=2,
    ),
    Family(
        "running_total", 3, _draw_running_total,
        ("Return the running totals of {xs}", "Return the cumulative sums of {xs}",
         "List the partial sums of {xs}, one per item"),
        ("t = 0\nresult = []\nfor x in {xs}:\n    t += x\n    result.append(t)",), held_out=2,
    ),
    Family(
        "count_above_average", 3, _draw_count_above_average,
        ("How many numbers in {xs} are greater than their average?",
         "Count the items of {xs} that are above the mean",
         "Return how many values in {xs} exceed the average of the list"),
        ("xs = {xs}\nresult = len([x for x in xs if x > sum(xs) / len(xs)])",), held_out=2,
    ),
    Family(
        "doubling_steps", 3, _draw_doubling_steps,
        ("How many times must {a} be doubled to reach at least {b}?",
         "Starting at {a}, double until the value is {b} or more; return how many doublings",
         "Count the doublings that take {a} to {b} or beyond"),
        ("n = {a}\nresult = 0\nwhile n < {b}:\n    n *= 2\n    result += 1",), held_out=2,
    ),
    Family(
        "word_count_dict", 3, _draw_word_count_dict,
        ("Count how often each word appears in {ws}; return a dict", "Return a dict of word counts for {ws}",
         "Map each word in {ws} to the number of times it occurs"),
        ("result = {{}}\nfor x in {ws}:\n    result[x] = result.get(x, 0) + 1",), held_out=2,
    ),
    Family(
        "digit_sum", 3, _draw_digit_sum,
        ("Return the sum of the digits of {n}", "Add up the digits of {n}", "What is the digit sum of {n}?"),
        ("result = sum([int(x) for x in str({n})])",), held_out=2,
    ),
    # tier 3, underspecified conventions: every solution is a reading; the checker wants one per task
    Family(
        "between", 3, _draw_between,
        ("Return the numbers in {xs} between {a} and {b}", "Which numbers of {xs} lie between {a} and {b}?",
         "Keep the items of {xs} that are between {a} and {b}"),
        ("result = [x for x in {xs} if {a} <= x <= {b}]", "result = [x for x in {xs} if {a} < x < {b}]"),
        held_out=2,
    ),
    Family(
        "position_of", 3, _draw_position_of,
        ("Return the position of {v} in {xs}", "Where does {v} appear in {xs}?",
         "At which place in {xs} is {v}?"),
        ("result = {xs}.index({v})", "result = {xs}.index({v}) + 1"),
        held_out=2,
    ),
    Family(
        "average", 3, _draw_average,
        ("Return the average of {xs}", "What is the mean of {xs}?",
         "Compute the average value of the numbers {xs}"),
        ("result = sum({xs}) / len({xs})", "result = sum({xs}) // len({xs})",
         "result = round(sum({xs}) / len({xs}))"),
        held_out=2,
    ),
    Family(
        "sort_words_case", 3, _draw_sort_words_case,
        ("Sort the words {ws}", "Return {ws} in alphabetical order", "Alphabetize {ws}"),
        ("result = sorted({ws})", "result = sorted({ws}, key=str.lower)"),
        held_out=2,
    ),
)  # fmt: skip

FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILY_LIST}


# --- generation ----------------------------------------------------------------------------------------

_BUILTINS = {name: getattr(builtins, name) for name in REFERENCE_BUILTINS}


def run_reference(program: str) -> str:
    """`str(result)` of one of our own reference programs, run in-process as one module namespace.

    Only for trusted code written in this file: it is `exec` with a reduced set of builtins, no sandbox.
    """
    namespace: dict[str, object] = {"__builtins__": _BUILTINS}
    exec(program, namespace)
    return str(namespace["result"])


def _render(params: Params) -> dict[str, str]:
    return {k: v if isinstance(v, Raw) else repr(v) for k, v in params.items()}


def _canonical(params: Params) -> str:
    return repr(sorted(params.items()))


def split_of(family: str, params: Params) -> str:
    """The split a (family, values) pair belongs to, by a hash that is stable across runs and machines."""
    digest = hashlib.sha256(f"{family}|{_canonical(params)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def make_task(
    family: Family, params: Params, phrasing: int, reading: int, task_id: str, split: str
) -> Task | None:
    """Render one task; None when it repeats a seed task or two readings print the same result.

    The prompt depends on the parameters and the phrasing only, never on the wanted reading.
    """
    fields = _render(params)
    prompt = family.phrasings[phrasing].format(**fields)
    programs = [template.format(**fields) for template in family.solutions]
    if prompt in _SEED_PROMPTS or _SEED_PROGRAMS.intersection(programs):
        return None
    outputs = [run_reference(p) for p in programs]
    if len(set(outputs)) < len(outputs):
        return None
    return Task(
        id=task_id,
        prompt=prompt,
        expected=outputs[reading],
        solution=programs[reading],
        family=family.name,
        tier=family.tier,
        phrasing=f"{family.name}/{phrasing}",
        split=split,
        distractors=[p for i, p in enumerate(programs) if i != reading],
    )


def _draw_task(family: Family, split: str, rng: random.Random, task_id: str) -> tuple[Task, str]:
    """Rejection-sample one task of `split`; returns it with its canonical parameters."""
    choices = family.phrasing_choices(split)
    for _ in range(10_000):
        params = family.draw(rng)
        if params is None or split_of(family.name, params) != split:
            continue
        phrasing = rng.choice(choices)
        reading = rng.randrange(len(family.solutions))
        task = make_task(family, params, phrasing, reading, task_id, split)
        if task is not None:
            return task, _canonical(params)
    raise RuntimeError(f"family {family.name!r} drew no {split} task in 10000 tries; its generator is broken")


def _check_split(split: str) -> None:
    if split not in SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_BUCKETS)}")


def _select(families: Sequence[str] | None) -> list[Family]:
    if families is None:
        return list(FAMILIES.values())
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; see nanocodegen.families.FAMILIES for the names")
    return [FAMILIES[name] for name in families]


def generate_tasks(
    split: str, n_per_family: int, seed: int, families: Sequence[str] | None = None
) -> list[Task]:
    """`n_per_family` tasks of each family, distinct in values, ids `synthetic/<split>/<family>/<k>`.

    Deterministic in (split, n_per_family, seed); each family has its own random stream, so adding a
    family leaves the others' tasks unchanged.
    """
    _check_split(split)
    tasks: list[Task] = []
    for family in _select(families):
        rng = random.Random(f"{seed}/{split}/{family.name}")
        seen: set[str] = set()
        repeats = 0  # draws in a row that gave values already taken
        while len(seen) < n_per_family:
            task, key = _draw_task(family, split, rng, f"synthetic/{split}/{family.name}/{len(seen)}")
            if key not in seen:
                seen.add(key)
                tasks.append(task)
                repeats = 0
            elif (repeats := repeats + 1) > 1000:
                raise ValueError(
                    f"family {family.name!r} has too few distinct values in the {split} split for "
                    f"{n_per_family} tasks; ask for fewer"
                )
    return tasks


def iter_train_tasks(seed: int, families: Sequence[str] | None = None) -> Iterator[Task]:
    """An endless, seeded stream of train-split tasks, families drawn uniformly; values may repeat."""
    chosen = _select(families)
    rng = random.Random(f"{seed}/train-stream")
    k = 0
    while True:
        family = rng.choice(chosen)
        task, _ = _draw_task(family, "train", rng, f"synthetic/train/{family.name}/{k}")
        k += 1
        yield task


def shipped_split(split: str) -> list[Task]:
    """The tasks of a shipped split file, regenerated (what `--write` writes)."""
    return generate_tasks(split, SHIPPED_PER_FAMILY[split], SHIPPED_SEED)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanocodegen.families", description="task families")
    parser.add_argument("--write", action="store_true", help="regenerate the shipped val and test files")
    args = parser.parse_args(argv)
    if args.write:
        for split in SHIPPED_PER_FAMILY:
            tasks = shipped_split(split)
            path = packaged_data(f"synthetic_{split}.jsonl")
            write_tasks(path, tasks)
            print(f"wrote {len(tasks)} tasks to {path}")
        return
    print(f"{'family':<22}{'tier':>4}  {'kind':<12}{'phrasings':>9}  held-out phrasing")
    for f in FAMILIES.values():
        held = f.phrasings[f.held_out] if f.held_out is not None else "-"
        print(f"{f.name:<22}{f.tier:>4}  {f.kind:<12}{len(f.phrasings):>9}  {held}")


if __name__ == "__main__":
    main()
