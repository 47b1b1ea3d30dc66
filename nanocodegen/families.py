"""Synthetic task families: the synthetic benchmark suites and the model's training tasks.

    python -m nanocodegen.families                    # list the families
    python -m nanocodegen.families --phrasings power  # a family's phrasings, the held-out ones marked
    python -m nanocodegen.families --write            # regenerate nanocodegen/data/synthetic_{val,test}.jsonl

A *family* is one kind of task (sum a list, reverse a string, ...): a parameter generator drawing values
from a `random.Random`, a small phrasing grammar and a reference solution template. A task is one draw
rendered with one phrasing; its `expected` is `str(result)` after actually running the reference program,
so a family cannot state a wrong answer.

Phrasings are compositional. A family lists *lead-ins* ("Return {}", "Give {}", "What is {}?", mostly
from a set shared across families), *cores* that say what to compute ("the sum of {xs}", "the total of
{xs}") and *tails* ("", " as a list"); every phrasing is one lead-in wrapped around one core followed by
one tail, and every combination is a phrasing. Per family about 15% of the combinations (chosen by a
stable hash) are held out of train, and they are chosen so that every lead-in, core and tail still
appears in train in other combinations: a held-out phrasing is a new combination of seen parts, never a
new word, so it tests systematic generalisation rather than luck. Val and test draw uniformly over all
combinations, so about 15% of their tasks use a held-out phrasing (`Task.held_out`). The first
combination (lead-in 0, core 0, tail 0) is never held out: for the seed families it is the structure of
the seed prompt ("Return the sum of {xs}").

Solutions are copy-only: every literal in a reference program is either shown verbatim in the prompt
or one of the family's fixed `constants` (the 2 of `x % 2`, the 1 of `b + 1`, `'aeiou'`), so the model
never computes a number to write a program. "From 3 through 7" is `range(3, 7 + 1)`, not `range(3, 8)`.

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
`x` as the loop and comprehension variable and list comprehensions rather than generators, writes
`range(0, n)` as `range(n)`, imports nothing and calls only the builtins in `REFERENCE_BUILTINS`.
Programs run as one module: globals and locals are one namespace (a comprehension may read a variable
the program set). Lists hold at most 7 items; words come from `WORDS`, in lower case except where the
task is about case.

Splits are disjoint in values: a draw belongs to `train`, `val` or `test` by a stable hash (sha256, never
Python's `hash()`) of the family name and its parameters, and each split samples by rejection until the
hash falls in it, so no (family, values) pair is in two splits. No task in any split repeats a seed
prompt or seed solution, since the seed suite is a benchmark of its own.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import itertools
import random
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from nanocodegen.tasks import SEED_SOLUTIONS, TASK_BANK, Task, packaged_data, write_tasks

Params = dict[str, object]
Combination = tuple[int, int, int]  # (lead-in, core, tail) indices of one phrasing

# Draws fall in a split by hash bucket (0..99): 80% train, 10% val, 10% test.
SPLIT_BUCKETS: dict[str, range] = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}

# The share of each family's phrasing combinations kept out of train.
HELD_OUT_SHARE = 0.15

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

    `draw` returns the parameters (None rejects the draw). A phrasing is `lead.replace("{}", core + tail)`
    for one of each of `leads`, `cores` and `tails`; phrasings and `solutions` are `str.format` templates
    over the parameters. One solution for ordinary families; a convention family lists every reading.
    `constants` are the literals a solution may contain that the prompt does not show.
    """

    name: str
    tier: int
    draw: Callable[[random.Random], Params | None]
    leads: tuple[str, ...]
    cores: tuple[str, ...]
    solutions: tuple[str, ...]
    tails: tuple[str, ...] = ("",)
    constants: frozenset[int | str] = frozenset()

    @property
    def kind(self) -> str:
        if len(self.solutions) > 1:
            return "convention"
        return {1: "one-step", 2: "two-step", 3: "composition"}[self.tier]

    @property
    def combinations(self) -> list[Combination]:
        """Every (lead-in, core, tail) combination, in order."""
        sizes = (len(self.leads), len(self.cores), len(self.tails))
        return list(itertools.product(*(range(n) for n in sizes)))

    def template(self, combination: Combination) -> str:
        lead, core, tail = combination
        return self.leads[lead].replace("{}", self.cores[core] + self.tails[tail])

    def phrasing_id(self, combination: Combination) -> str:
        """The id a task records, e.g. "sum_list/L0-C2-T0"."""
        lead, core, tail = combination
        return f"{self.name}/L{lead}-C{core}-T{tail}"

    @cached_property
    def held_out(self) -> frozenset[Combination]:
        """The combinations kept out of train: about `HELD_OUT_SHARE` of them, every part still trained.

        Candidates are taken in the order of a stable hash of their ids; one is skipped when holding it
        out would leave one of its parts with no trained combination. (0, 0, 0) is always trained.
        """
        every = self.combinations
        wanted = max(1, round(HELD_OUT_SHARE * len(every)))
        trained = set(every)
        held: set[Combination] = set()
        for c in sorted(every, key=lambda c: hashlib.sha256(self.phrasing_id(c).encode()).digest()):
            if len(held) == wanted:
                break
            rest = trained - {c}
            if c != (0, 0, 0) and all(any(r[k] == c[k] for r in rest) for k in range(3)):
                trained, held = rest, held | {c}
        assert len(held) == wanted, f"family {self.name!r}: too few phrasing combinations to hold some out"
        return frozenset(held)

    def phrasing_choices(self, split: str) -> list[Combination]:
        """The combinations a task of `split` may use: train never sees the held-out ones."""
        every = self.combinations
        return [c for c in every if c not in self.held_out] if split == "train" else every


# The vocabulary: every word in a task is one of these (capitalised or upper-cased where case matters).
WORDS = """
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
_SHORT_WORDS = [w for w in WORDS if len(w) <= 4]  # for dict keys and repeats, to keep programs short
_NO_Y_WORDS = [w for w in WORDS if "y" not in w]  # "how many vowels" is unambiguous without 'y'
# Half the strings are made up, so the model learns to copy any string, not only the words it has seen
# as single tokens (the seed suite's 'hello' and 'benchmark' are in no split).
MADE_UP_SHARE = 0.5
_VOWELS, _CONSONANTS = "aeiou", "bcdfghjklmnprstvwxz"
# Things to put a price on, for price_total.
_GOODS = "cake corn cup egg hat jam lamp lime milk pen plum pot salt soap sock tea".split()


# --- drawing helpers -------------------------------------------------------------------------------------


def _made_up_word(rng: random.Random, lo: int, hi: int) -> str:
    """A lower-case string of lo..hi letters (never containing 'y'): pronounceable or random letters."""
    n = rng.randint(lo, hi)
    if rng.random() < 0.5:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxz") for _ in range(n))
    letters, vowel = [], rng.random() < 0.3
    while len(letters) < n:
        letters.append(rng.choice(_VOWELS if vowel else _CONSONANTS))
        vowel = not vowel if rng.random() < 0.8 else vowel
    return "".join(letters)


def _word(rng: random.Random, short: bool = False, no_y: bool = False) -> str:
    """A word from the list (short ones for keys and repeats) or, half the time, a made-up one."""
    if rng.random() < MADE_UP_SHARE:
        return _made_up_word(rng, 2, 4 if short else 9)
    return rng.choice(_SHORT_WORDS if short else _NO_Y_WORDS if no_y else WORDS)


def _words(rng: random.Random, n: int, short: bool = False) -> list[str]:
    """n distinct words."""
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, short)
        if w not in out:
            out.append(w)
    return out


def _ints(rng: random.Random, lo: int, hi: int, n_lo: int = 3, n_hi: int = 7) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


def _distinct_ints(rng: random.Random, lo: int, hi: int, n_lo: int, n_hi: int) -> list[int]:
    return rng.sample(range(lo, hi + 1), rng.randint(n_lo, n_hi))


def _parity(rng: random.Random) -> tuple[Raw, int]:
    """("even", 0) or ("odd", 1): the word for the prompt and the remainder for `x % 2 == r`."""
    return (Raw("even"), 0) if rng.random() < 0.5 else (Raw("odd"), 1)


def _range_args(start: int, stop: str) -> Raw:
    """The arguments of `range(start, stop)`, written `range(stop)` when start is 0, as a person would."""
    return Raw(stop if start == 0 else f"{start}, {stop}")


def _range_start(rng: random.Random) -> int:
    return 0 if rng.random() < 0.3 else rng.randint(-5, 20)


def _extreme(rng: random.Random, biggest: str, smallest: str) -> tuple[Raw, Raw]:
    """("max", biggest) or ("min", smallest): the builtin and the adjective naming it."""
    return (Raw("max"), Raw(biggest)) if rng.random() < 0.5 else (Raw("min"), Raw(smallest))


# --- tier 1: one step ------------------------------------------------------------------------------------


def _draw_sum_list(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -10, 30)}


def _draw_word(rng: random.Random) -> Params:
    return {"w": _word(rng)}


def _draw_reverse_string(rng: random.Random) -> Params | None:
    w = _word(rng)
    return None if w == w[::-1] else {"w": w}


def _draw_power(rng: random.Random) -> Params | None:
    b = rng.randint(2, 12)
    a = rng.randint(2, 99 if b == 2 else 50 if b <= 4 else 12)
    return {"a": a, "b": b} if a**b <= 10**7 else None


def _draw_sort_list(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 20, 4, 7)
    return None if xs == sorted(xs) else {"xs": xs}


def _draw_max_or_min(rng: random.Random) -> Params:
    fn, adj = _extreme(rng, "largest", "smallest")
    a, b, c = rng.sample(range(-20, 100), 3)
    return {"fn": fn, "adj": adj, "a": a, "b": b, "c": c}


def _draw_repeat_string(rng: random.Random) -> Params:
    return {"s": _word(rng, short=True), "n": rng.randint(2, 5)}


def _draw_range_list(rng: random.Random) -> Params:
    a = _range_start(rng)
    b = a + rng.randint(1, 7)
    return {"a": a, "b": b, "args": _range_args(a, str(b))}


def _draw_range_through(rng: random.Random) -> Params:
    a = _range_start(rng)
    last = a + rng.randint(1, 6)
    return {"a": a, "last": last, "args": _range_args(a, f"{last} + 1")}


def _draw_change_case(rng: random.Random) -> Params:
    w = _word(rng)
    if rng.random() < 0.5:
        return {"w": w, "case": Raw("upper"), "op": Raw("upper")}
    shown = w.upper() if rng.random() < 0.5 else w.capitalize()
    return {"w": shown, "case": Raw("lower"), "op": Raw("lower")}


def _draw_count_char(rng: random.Random) -> Params:
    w = _word(rng)
    c = rng.choice(w) if rng.random() < 0.85 else rng.choice(string.ascii_lowercase)
    return {"w": w, "c": c}


_ARITHMETIC_FORMS = (
    ("{a} * {b} + {c}", "multiplying {a} by {b} and then adding {c}"),
    ("{a} * {b} - {c}", "multiplying {a} by {b} and then subtracting {c}"),
    ("({a} + {b}) * {c}", "adding {a} and {b} and then multiplying by {c}"),
    ("({a} - {b}) * {c}", "subtracting {b} from {a} and then multiplying by {c}"),
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
        words = f"{a} divided by {b}, rounded down", f"the floor of {a} divided by {b}"
        return {"a": a, "b": b, "op": Raw("//"), "what": Raw(words[0]), "what2": Raw(words[1])}
    words = f"the remainder of {a} divided by {b}", f"the remainder when {a} is divided by {b}"
    return {"a": a, "b": b, "op": Raw("%"), "what": Raw(words[0]), "what2": Raw(words[1])}


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
    xs = _ints(rng, -9, 30, 4, 7)
    i = -1 if rng.random() < 0.15 else rng.randrange(len(xs))
    return {"xs": xs, "i": i}


def _draw_string_slice(rng: random.Random) -> Params | None:
    w = _word(rng)
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
    xs = _ints(rng, -9, 20, 4, 7)
    parity, r = _parity(rng)
    kept = [x for x in xs if x % 2 == r]
    return {"xs": xs, "parity": parity, "r": r} if 0 < len(kept) < len(xs) else None


def _draw_count_greater(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -9, 20, 4, 7), "t": rng.randint(-5, 15)}


def _draw_word_lengths(rng: random.Random) -> Params:
    return {"ws": _words(rng, rng.randint(3, 5))}


def _draw_zip_dict(rng: random.Random) -> Params:
    n = rng.randint(2, 4)
    return {"ks": _words(rng, n, short=True), "vs": [rng.randint(0, 20) for _ in range(n)]}


def _draw_dict_get(rng: random.Random) -> Params:
    keys = _words(rng, rng.randint(2, 4), short=True)
    return {"d": {k: rng.randint(0, 20) for k in keys}, "k": rng.choice(keys)}


def _draw_product(rng: random.Random) -> Params:
    return {"xs": [rng.choice((-3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9)) for _ in range(rng.randint(3, 5))]}


def _draw_sum_range(rng: random.Random) -> Params:
    a = 0 if rng.random() < 0.3 else rng.randint(1, 20)
    b = a + rng.randint(3, 50)
    return {"a": a, "b": b, "a1": a + 1, "args": _range_args(a, f"{b} + 1")}


def _draw_longest_word(rng: random.Random) -> Params | None:
    ws = _words(rng, rng.randint(3, 5))
    fn, adj = _extreme(rng, "longest", "shortest")
    lengths = sorted(len(w) for w in ws)
    unique = lengths[-1] != lengths[-2] if fn == "max" else lengths[0] != lengths[1]
    return {"ws": ws, "fn": fn, "adj": adj} if unique else None


def _draw_count_vowels(rng: random.Random) -> Params:
    return {"w": _word(rng, no_y=True)}


def _draw_spread(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -9, 30, 3, 6)}


# --- tier 3, compositions ----------------------------------------------------------------------------------


def _draw_filter_map_sum(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 15, 4, 7)
    parity, r = _parity(rng)
    kept = [x for x in xs if x % 2 == r]
    return {"xs": xs, "parity": parity, "r": r} if 0 < len(kept) < len(xs) else None


def _draw_extreme_of_filtered(rng: random.Random) -> Params | None:
    xs = _ints(rng, -9, 30, 4, 7)
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
    return {"d": prices, "items": [rng.choice(keys) for _ in range(rng.randint(2, 3))]}


def _draw_running_total(rng: random.Random) -> Params:
    return {"xs": _ints(rng, -5, 20, 3, 6)}


def _draw_count_above_average(rng: random.Random) -> Params | None:
    xs = _ints(rng, 0, 30, 4, 7)
    return None if len(set(xs)) == 1 else {"xs": xs}


def _draw_doubling_steps(rng: random.Random) -> Params:
    a = rng.randint(1, 20)
    return {"a": a, "b": rng.randint(a + 1, 500)}


def _draw_word_count_dict(rng: random.Random) -> Params | None:
    pool = _words(rng, rng.randint(2, 3), short=True)
    ws = [rng.choice(pool) for _ in range(rng.randint(4, 6))]
    return {"ws": ws} if 1 < len(set(ws)) < len(ws) else None


def _draw_digit_sum(rng: random.Random) -> Params:
    return {"n": rng.randint(10, 99999)}


# --- tier 3, underspecified conventions --------------------------------------------------------------------


def _draw_between(rng: random.Random) -> Params:
    xs = _distinct_ints(rng, 0, 25, 5, 7)
    a, b = sorted(rng.sample(xs, 2)) if rng.random() < 0.7 else sorted(rng.sample(range(0, 26), 2))
    return {"xs": xs, "a": a, "b": b}


def _draw_position_of(rng: random.Random) -> Params:
    xs = _distinct_ints(rng, -5, 30, 4, 7)
    return {"xs": xs, "v": rng.choice(xs)}


def _draw_average(rng: random.Random) -> Params | None:
    # Lengths 4 and 5 give short exact decimals; a fraction above .5 keeps float, floor and round apart.
    xs = [rng.randint(0, 30) for _ in range(rng.choice((4, 5)))]
    return {"xs": xs} if sum(xs) % len(xs) * 2 > len(xs) else None


def _draw_sort_words_case(rng: random.Random) -> Params:
    ws = _words(rng, rng.randint(3, 5))
    for i in rng.sample(range(len(ws)), rng.randint(1, 2)):
        ws[i] = ws[i].capitalize()
    return {"ws": ws}


# --- the families ------------------------------------------------------------------------------------------
# Lead-ins shared across families; "{}" is where the core (and tail) goes. A family uses those that read
# well with its cores, plus a few of its own.
_RETURN, _GIVE, _COMPUTE, _FIND, _WHAT = "Return {}", "Give {}", "Compute {}", "Find {}", "What is {}?"
_LIST, _COUNT, _WORK_OUT = "List {}", "Count {}", "Work out {}"
_VALUE = (_RETURN, _GIVE, _COMPUTE, _FIND, _WHAT)  # for a core naming a single value
_AS_LIST = ("", " as a list")
# The fixed constants of solutions: a parity test's `% 2 == r`, an accumulator's start, a count's step.
_PARITY = frozenset({0, 1, 2})

# Lead-in 0 with core 0 and tail 0 of the first eight families is the structure of a seed prompt.
_FAMILY_LIST = (
    # tier 1
    Family(
        "sum_list", 1, _draw_sum_list, _VALUE,
        ("the sum of {xs}", "the total of {xs}", "the sum of the numbers in {xs}", "the total of the list {xs}"),
        ("result = sum({xs})",),
    ),
    Family(
        "reverse_string", 1, _draw_reverse_string, (_RETURN, _GIVE, "Write {}", _WHAT),
        ("{w} reversed", "{w} spelled backwards", "the reverse of {w}", "{w} backwards"),
        ("result = {w}[::-1]",), constants=frozenset({1}),
    ),
    Family(
        "string_length", 1, _draw_word, _VALUE,
        ("the length of {w}", "the number of letters in {w}", "the number of characters in {w}"),
        ("result = len({w})",),
    ),
    Family(
        "power", 1, _draw_power, _VALUE,
        ("{a} ** {b}", "{a} to the power of {b}", "{a} raised to the power {b}"),
        ("result = {a} ** {b}",),
    ),
    Family(
        "sort_list", 1, _draw_sort_list, (_RETURN, _GIVE, _WHAT),
        ("sorted({xs})", "{xs} sorted", "{xs} in ascending order", "{xs} in increasing order",
         "{xs} ordered from smallest to largest"),
        ("result = sorted({xs})",),
    ),
    Family(
        "max_or_min", 1, _draw_max_or_min, _VALUE,
        ("{fn}({a}, {b}, {c})", "the {adj} of {a}, {b} and {c}", "the {adj} number among {a}, {b} and {c}"),
        ("result = {fn}({a}, {b}, {c})",),
    ),
    Family(
        "repeat_string", 1, _draw_repeat_string, (_RETURN, _GIVE, _COMPUTE, _WHAT),
        ("{s} * {n}", "{s} repeated {n} times", "the string {s} repeated {n} times",
         "{n} copies of {s} joined together"),
        ("result = {s} * {n}",),
    ),
    Family(
        "range_list", 1, _draw_range_list, (_RETURN, _GIVE, _COMPUTE),
        ("list(range({args}))", "the integers from {a} up to but not including {b}",
         "the whole numbers from {a} up to but not including {b}", "the integers from {a} to {b}, excluding {b}"),
        ("result = list(range({args}))",),
    ),
    Family(
        "range_through", 1, _draw_range_through, (_RETURN, _GIVE, _LIST),
        ("the integers from {a} through {last}", "the integers from {a} to {last} inclusive",
         "the whole numbers from {a} through {last}", "the whole numbers from {a} to {last}, including {last}"),
        ("result = list(range({args}))",), constants=frozenset({1}),
    ),
    Family(
        "change_case", 1, _draw_change_case, (_RETURN, _GIVE, "Write {}", _WHAT),
        ("{w} in {case} case", "{w}.{op}()", "{w} in {case}-case letters", "{w} converted to {case} case"),
        ("result = {w}.{op}()",),
    ),
    Family(
        "count_char", 1, _draw_count_char, (_RETURN, _GIVE, _FIND, _WHAT),
        ("the number of times {c} appears in {w}", "the number of {c} characters in {w}", "{w}.count({c})",
         "the count of {c} in {w}"),
        ("result = {w}.count({c})",),
    ),
    Family(
        "arithmetic", 1, _draw_arithmetic, _VALUE,
        ("{expr}", "the value of {expr}", "the result of {steps}"),
        ("result = {expr}",),
    ),
    Family(
        "divide", 1, _draw_divide, _VALUE,
        ("{a} {op} {b}", "{what}", "{what2}"),
        ("result = {a} {op} {b}",),
    ),
    Family(
        "compare", 1, _draw_compare, (_RETURN, _GIVE, "Check {}"),
        ("{a} {op} {b}", "whether {a} is {rel} {b}", "if {a} is {rel} {b}"),
        ("result = {a} {op} {b}",), tails=("", " as True or False"),
    ),
    Family(
        "item_at", 1, _draw_item_at, (_RETURN, _GIVE, _FIND, _WHAT),
        ("{xs}[{i}]", "the item at index {i} of {xs}", "the element at index {i} in {xs}",
         "the value at index {i} of {xs}"),
        ("result = {xs}[{i}]",),
    ),
    Family(
        "string_slice", 1, _draw_string_slice, (_RETURN, _GIVE, _FIND, "Take {}"),
        ("the {end} {n} letters of {w}", "the {end} {n} characters of {w}", "{w}[{part}]"),
        ("result = {w}[{part}]",),
    ),
    # tier 2
    Family(
        "squares", 2, _draw_squares, (_RETURN, _GIVE, _LIST, _COMPUTE),
        ("the squares of {xs}", "the square of each number in {xs}", "every number of {xs} squared"),
        ("result = [x ** 2 for x in {xs}]",), tails=_AS_LIST, constants=frozenset({2}),
    ),
    Family(
        "filter_parity", 2, _draw_filter_parity, (_RETURN, _GIVE, _LIST, _FIND),
        ("the {parity} numbers in {xs}", "the {parity} values of {xs}", "only the {parity} numbers of {xs}",
         "the numbers of {xs} that are {parity}"),
        ("result = [x for x in {xs} if x % 2 == {r}]",), tails=_AS_LIST, constants=_PARITY,
    ),
    Family(
        "count_greater", 2, _draw_count_greater, (_RETURN, _COUNT, _FIND, _WORK_OUT),
        ("how many numbers in {xs} are greater than {t}", "how many items of {xs} exceed {t}",
         "how many values in {xs} are above {t}"),
        ("result = len([x for x in {xs} if x > {t}])",),
    ),
    Family(
        "word_lengths", 2, _draw_word_lengths, (_RETURN, _GIVE, _LIST, _FIND),
        ("the length of each word in {ws}", "the lengths of the words {ws}", "the letter count of each of {ws}"),
        ("result = [len(x) for x in {ws}]",), tails=_AS_LIST,
    ),
    Family(
        "zip_dict", 2, _draw_zip_dict, (_RETURN, _GIVE, "Make {}", "Build {}"),
        ("a dict mapping {ks} to {vs}", "a dict pairing the keys {ks} with the values {vs}",
         "dict(zip({ks}, {vs}))"),
        ("result = dict(zip({ks}, {vs}))",),
    ),
    Family(
        "dict_get", 2, _draw_dict_get, (_RETURN, _GIVE, _FIND, _WHAT),
        ("the value for {k} in {d}", "{d}[{k}]", "the value stored under {k} in {d}"),
        ("result = {d}[{k}]",),
    ),
    Family(
        "product", 2, _draw_product, _VALUE,
        ("the product of {xs}", "the product of the numbers in {xs}", "all the numbers in {xs} multiplied together"),
        ("result = 1\nfor x in {xs}:\n    result *= x",), constants=frozenset({1}),
    ),
    Family(
        "sum_range", 2, _draw_sum_range, _VALUE,
        ("the sum of the integers from {a} to {b} inclusive", "the total of the whole numbers from {a} through {b}",
         "{a} + {a1} + ... + {b}", "sum(range({args}))"),
        ("result = sum(range({args}))",), constants=frozenset({1}),
    ),
    Family(
        "longest_word", 2, _draw_longest_word, (_RETURN, _GIVE, _FIND, _WHAT),
        ("the {adj} word in {ws}", "the {adj} string in {ws}", "the {adj} of the words {ws}"),
        ("result = {fn}({ws}, key=len)",),
    ),
    Family(
        "count_vowels", 2, _draw_count_vowels, _VALUE,
        ("the number of vowels in {w}", "the count of vowels in {w}", "the vowel count of {w}"),
        ("result = len([x for x in {w} if x in 'aeiou'])",), constants=frozenset({"aeiou"}),
    ),
    Family(
        "spread", 2, _draw_spread, _VALUE,
        ("the difference between the largest and smallest numbers in {xs}", "the maximum of {xs} minus its minimum",
         "the largest minus the smallest value in {xs}"),
        ("result = max({xs}) - min({xs})",),
    ),
    # tier 3, compositions
    Family(
        "filter_map_sum", 3, _draw_filter_map_sum, _VALUE,
        ("the sum of the squares of the {parity} numbers in {xs}", "the total of the squared {parity} values of {xs}",
         "the sum of squares of the {parity} items in {xs}"),
        ("result = sum([x ** 2 for x in {xs} if x % 2 == {r}])",), constants=_PARITY,
    ),
    Family(
        "extreme_of_filtered", 3, _draw_extreme_of_filtered, (_RETURN, _GIVE, _FIND, _WHAT),
        ("the {adj} {parity} number in {xs}", "the {adj} of the {parity} values in {xs}",
         "the {adj} among the {parity} numbers of {xs}"),
        ("result = {fn}([x for x in {xs} if x % 2 == {r}])",), constants=_PARITY,
    ),
    Family(
        "price_total", 3, _draw_price_total,
        ("Prices are {d}. Return {}", "Given prices {d}, return {}", "Prices are {d}. What is {}?",
         "With prices {d}, find {}"),
        ("the total cost of {items}", "the cost of {items} in all", "the summed price of {items}"),
        ("result = 0\nfor x in {items}:\n    result += {d}[x]",), constants=frozenset({0}),
    ),
    Family(
        "running_total", 3, _draw_running_total, (_RETURN, _GIVE, _LIST, _COMPUTE),
        ("the running totals of {xs}", "the cumulative sums of {xs}", "the partial sums of {xs}"),
        ("t = 0\nresult = []\nfor x in {xs}:\n    t += x\n    result.append(t)",),
        tails=_AS_LIST, constants=frozenset({0}),
    ),
    Family(
        "count_above_average", 3, _draw_count_above_average, (_RETURN, _COUNT, _FIND, _WORK_OUT),
        ("how many numbers in {xs} are greater than their average", "how many items of {xs} are above the mean",
         "how many values in {xs} exceed the average"),
        ("xs = {xs}\nresult = len([x for x in xs if x > sum(xs) / len(xs)])",),
    ),
    Family(
        "doubling_steps", 3, _draw_doubling_steps, (_RETURN, _COUNT, _FIND, _WORK_OUT),
        ("how many times {a} must be doubled to reach at least {b}", "how many doublings take {a} to {b} or more",
         "how many times to double {a} until it is at least {b}"),
        ("n = {a}\nresult = 0\nwhile n < {b}:\n    n *= 2\n    result += 1",), constants=_PARITY,
    ),
    Family(
        "word_count_dict", 3, _draw_word_count_dict, (_RETURN, _GIVE, "Make {}", "Build {}"),
        ("a dict of word counts for {ws}", "a dict mapping each word in {ws} to its count",
         "a dictionary counting each word of {ws}"),
        ("result = {{}}\nfor x in {ws}:\n    result[x] = result.get(x, 0) + 1",), constants=frozenset({0, 1}),
    ),
    Family(
        "digit_sum", 3, _draw_digit_sum, _VALUE,
        ("the sum of the digits of {n}", "the digit sum of {n}", "the total of the digits in {n}"),
        ("result = sum([int(x) for x in str({n})])",),
    ),
    # tier 3, underspecified conventions: every solution is a reading; the checker wants one per task
    Family(
        "between", 3, _draw_between, (_RETURN, _GIVE, _LIST, _FIND),
        ("the numbers in {xs} between {a} and {b}", "the items of {xs} that lie between {a} and {b}",
         "the values of {xs} between {a} and {b}"),
        ("result = [x for x in {xs} if {a} <= x <= {b}]", "result = [x for x in {xs} if {a} < x < {b}]"),
        tails=_AS_LIST,
    ),
    Family(
        "position_of", 3, _draw_position_of, (_RETURN, _GIVE, _FIND, _WHAT),
        ("the position of {v} in {xs}", "the place of {v} in {xs}", "the position at which {v} occurs in {xs}"),
        ("result = {xs}.index({v})", "result = {xs}.index({v}) + 1"), constants=frozenset({1}),
    ),
    Family(
        "average", 3, _draw_average, _VALUE,
        ("the average of {xs}", "the mean of {xs}", "the average value of the numbers {xs}"),
        ("result = sum({xs}) / len({xs})", "result = sum({xs}) // len({xs})",
         "result = round(sum({xs}) / len({xs}))"),
    ),
    Family(
        "sort_words_case", 3, _draw_sort_words_case, (_RETURN, _GIVE, _LIST),
        ("{ws} sorted", "{ws} in alphabetical order", "the words {ws} sorted", "{ws} alphabetized"),
        ("result = sorted({ws})", "result = sorted({ws}, key=str.lower)"),
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
    family: Family, params: Params, phrasing: Combination, reading: int, task_id: str, split: str
) -> Task | None:
    """Render one task; None when it repeats a seed task or two readings print the same result.

    The prompt depends on the parameters and the phrasing only, never on the wanted reading.
    """
    fields = _render(params)
    prompt = family.template(phrasing).format(**fields)
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
        phrasing=family.phrasing_id(phrasing),
        held_out=phrasing in family.held_out,
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
    parser.add_argument("--phrasings", metavar="FAMILY", choices=list(FAMILIES), help="list one family's phrasings")
    args = parser.parse_args(argv)
    if args.write:
        for split in SHIPPED_PER_FAMILY:
            tasks = shipped_split(split)
            path = packaged_data(f"synthetic_{split}.jsonl")
            write_tasks(path, tasks)
            print(f"wrote {len(tasks)} tasks to {path}")
        return
    if args.phrasings:
        family = FAMILIES[args.phrasings]
        for c in family.combinations:
            print(f"{family.phrasing_id(c):<34}{'held out' if c in family.held_out else '':<10}{family.template(c)}")
        return
    print(f"{'family':<22}{'tier':>4}  {'kind':<12}{'phrasings':>9}{'held out':>9}")
    for f in FAMILIES.values():
        print(f"{f.name:<22}{f.tier:>4}  {f.kind:<12}{len(f.combinations):>9}{len(f.held_out):>9}")


if __name__ == "__main__":
    main()
