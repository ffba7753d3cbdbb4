"""Grade-school maths word problems with worked solutions, generated from a seed (GSM8K-style).

Five templates with integer answers; a problem's train/test split is fixed by a hash of its
canonical form, so the two splits never share a problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from lisa.validation import check_int

__all__ = ["SPLITS", "TEST_FRACTION", "make_math_problems", "problem_id", "problem_split"]

SPLITS = ("train", "test")
# Share of problems (by hash of their canonical form) that belong to the test split.
TEST_FRACTION = 0.2

_NAMES = (
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack",
    "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq",
)  # fmt: skip
_ITEMS = (
    ("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"),
    ("book", "books"), ("mug", "mugs"), ("sandwich", "sandwiches"), ("toy car", "toy cars"),
)  # fmt: skip
_SHARED = ("stickers", "marbles", "cookies", "cards", "stamps", "sweets")
_MACHINES = (("printer", "pages"), ("baker", "loaves"), ("pump", "litres"), ("robot", "parts"))


class _Problem:
    """One generated problem: text, worked solution, answer and the canonical numbers."""

    __slots__ = ("answer", "key", "question", "solution_lines")

    def __init__(self, key: tuple, question: str, solution_lines: list[str], answer: int):
        self.key = key
        self.question = question
        self.solution_lines = solution_lines
        self.answer = answer


def _shopping(rng: np.random.Generator) -> _Problem:
    name = _NAMES[rng.integers(len(_NAMES))]
    first, second = rng.choice(len(_ITEMS), size=2, replace=False)
    (_, items_a), (item_b, items_b) = _ITEMS[first], _ITEMS[second]
    count_a, price_a = int(rng.integers(2, 10)), int(rng.integers(2, 16))
    count_b, price_b = int(rng.integers(2, 10)), int(rng.integers(2, 16))
    cost_a, cost_b = count_a * price_a, count_b * price_b
    total = cost_a + cost_b
    with_change = bool(rng.integers(2))
    lines = [
        f"The {items_a} cost {count_a} * {price_a} = {cost_a} dollars.",
        f"The {items_b} cost {count_b} * {price_b} = {cost_b} dollars.",
        f"Together they cost {cost_a} + {cost_b} = {total} dollars.",
    ]
    question = (
        f"{name} buys {count_a} {items_a} for ${price_a} each and {count_b} {items_b} "
        f"for ${price_b} each."
    )
    if with_change:
        paid = int((total // 50 + 1) * 50 + 50 * rng.integers(0, 2))  # always above total
        answer = paid - total
        question += f" {name} pays with ${paid}. How much change does {name} get, in dollars?"
        lines.append(f"The change is {paid} - {total} = {answer} dollars.")
        key = ("shopping-change", count_a, price_a, count_b, price_b, paid)
    else:
        answer = total
        question += f" How much does {name} spend in total, in dollars?"
        key = ("shopping-total", count_a, price_a, count_b, price_b)
    del item_b  # singular form unused; the pair keeps _ITEMS rows uniform
    return _Problem(key, question, lines, answer)


def _sharing(rng: np.random.Generator) -> _Problem:
    name = _NAMES[rng.integers(len(_NAMES))]
    things = _SHARED[rng.integers(len(_SHARED))]
    friends, each = int(rng.integers(2, 10)), int(rng.integers(2, 13))
    kept = int(rng.integers(1, 20))
    total = friends * each + kept
    question = (
        f"{name} has {total} {things}. {name} keeps {kept} and shares the rest equally among "
        f"{friends} friends. How many {things} does each friend get?"
    )
    shared = total - kept
    lines = [
        f"{name} shares {total} - {kept} = {shared} {things}.",
        f"Each friend gets {shared} / {friends} = {each} {things}.",
    ]
    return _Problem(("sharing", total, kept, friends), question, lines, each)


def _rates(rng: np.random.Generator) -> _Problem:
    machine, unit = _MACHINES[rng.integers(len(_MACHINES))]
    rate = int(rng.integers(3, 25))
    if rng.integers(2):
        minutes_a, minutes_b = int(rng.integers(2, 12)), int(rng.integers(2, 12))
        made_a, made_b = rate * minutes_a, rate * minutes_b
        answer = made_a + made_b
        question = (
            f"A {machine} makes {rate} {unit} per minute. It works for {minutes_a} minutes, "
            f"rests, then works for {minutes_b} more minutes. How many {unit} does it make?"
        )
        lines = [
            f"First it makes {rate} * {minutes_a} = {made_a} {unit}.",
            f"Then it makes {rate} * {minutes_b} = {made_b} {unit}.",
            f"In total it makes {made_a} + {made_b} = {answer} {unit}.",
        ]
        key = ("rates-total", rate, minutes_a, minutes_b)
    else:
        answer = int(rng.integers(2, 15))
        target = rate * answer
        question = (
            f"A {machine} makes {rate} {unit} per minute. How many minutes does it take to "
            f"make {target} {unit}?"
        )
        lines = [f"It takes {target} / {rate} = {answer} minutes."]
        key = ("rates-time", rate, target)
    return _Problem(key, question, lines, answer)


def _multi_step(rng: np.random.Generator) -> _Problem:
    name = _NAMES[rng.integers(len(_NAMES))]
    things = _SHARED[rng.integers(len(_SHARED))]
    start = value = int(rng.integers(5, 40))
    sentences = [f"{name} has {value} {things}."]
    lines: list[str] = []
    operations: list[tuple[str, int]] = []
    for _ in range(int(rng.integers(2, 5))):
        kind = ("add", "subtract", "multiply", "divide")[rng.integers(4)]
        # Keep every intermediate value a positive integer of modest size.
        if kind == "multiply" and value > 60:
            kind = "subtract"
        if kind == "divide" and not any(value % d == 0 for d in (2, 3, 4, 5)):
            kind = "add"
        if kind == "subtract" and value < 4:
            kind = "add"
        if kind == "add":
            amount = int(rng.integers(2, 30))
            new = value + amount
            sentences.append(f"{name} gets {amount} more.")
            lines.append(f"After getting {amount} more: {value} + {amount} = {new}.")
        elif kind == "subtract":
            amount = int(rng.integers(1, value))
            new = value - amount
            sentences.append(f"{name} gives away {amount}.")
            lines.append(f"After giving away {amount}: {value} - {amount} = {new}.")
        elif kind == "multiply":
            amount = int(rng.integers(2, 4))
            new = value * amount
            word = {2: "doubles", 3: "triples"}[amount]
            sentences.append(f"Then the number of {things} {word}.")
            lines.append(f"After it {word}: {value} * {amount} = {new}.")
        else:
            divisors = [d for d in (2, 3, 4, 5) if value % d == 0]
            amount = divisors[rng.integers(len(divisors))]
            new = value // amount
            sentences.append(f"{name} splits them into {amount} equal piles and keeps one pile.")
            lines.append(f"One of {amount} equal piles: {value} / {amount} = {new}.")
        operations.append((kind, amount))
        value = new
    sentences.append(f"How many {things} does {name} have now?")
    key = ("multi-step", start, *operations)
    return _Problem(key, " ".join(sentences), lines, value)


def _savings(rng: np.random.Generator) -> _Problem:
    name = _NAMES[rng.integers(len(_NAMES))]
    weekly, weeks = int(rng.integers(3, 30)), int(rng.integers(2, 13))
    saved = weekly * weeks
    spent = int(rng.integers(1, saved))
    answer = saved - spent
    question = (
        f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a gift. "
        f"How many dollars does {name} have left?"
    )
    lines = [
        f"{name} saves {weekly} * {weeks} = {saved} dollars.",
        f"After the gift {name} has {saved} - {spent} = {answer} dollars.",
    ]
    return _Problem(("savings", weekly, weeks, spent), question, lines, answer)


# Templates in a fixed order: the order is part of the generator's seeded behaviour.
_TEMPLATES: tuple[Callable[[np.random.Generator], _Problem], ...] = (
    _shopping,
    _sharing,
    _rates,
    _multi_step,
    _savings,
)


def problem_id(key: tuple) -> str:
    """Return a short stable id of a problem's canonical form, e.g. ``"math-3f2a9c01d4e5"``.

    Args:
        key: the canonical form (template and numbers).

    Returns:
        ``"math-"`` and the first 12 hex digits of its SHA-256.
    """
    return "math-" + hashlib.sha256(repr(key).encode()).hexdigest()[:12]


def problem_split(key: tuple) -> str:
    """Return the split ("train" or "test") a problem belongs to, from its canonical form.

    The canonical form is the template plus its numbers (names and objects excluded, so a
    renamed copy of a test problem is still a test problem). A SHA-256 of it decides:
    ``TEST_FRACTION`` of the hash space is test, so the two splits can never share a problem.

    Args:
        key: the canonical form, a tuple of strings and ints.

    Returns:
        ``"train"`` or ``"test"``.
    """
    digest = hashlib.sha256(repr(key).encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < TEST_FRACTION else "train"


def make_math_problems(num_problems: int, *, seed: int = 0, split: str = "train") -> list[dict]:
    """Generate grade-school maths word problems with worked solutions, GSM8K-style.

    Five templates (shopping, sharing, rates, savings, multi-step with 2 to 4 operations), all
    with integer answers. Each solution shows one line per step and ends in ``#### <answer>``.
    Problems are distinct within a split, and a problem's split is fixed by a hash of its
    canonical form (:func:`problem_split`), so train and test never share one. The same seed
    gives the same list, and a shorter list is a prefix of a longer one.

    Args:
        num_problems: how many problems to return (>= 0).
        seed: seed of the ``np.random.Generator`` that draws templates and numbers.
        split: ``"train"`` or ``"test"``.

    Returns:
        Dicts with ``"instruction"``, ``"input"`` (``""``), ``"output"``, ``"answer"`` and
        ``"id"`` (:func:`problem_id` of the canonical form: equal ids mean the same problem).

    Example:
        >>> problem = make_math_problems(1, seed=0)[0]
        >>> problem["output"].endswith("#### " + problem["answer"])
        True
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    check_int("num_problems", num_problems, minimum=0)
    rng = np.random.default_rng(seed)
    seen: set[tuple] = set()
    problems: list[dict] = []
    # Generous: ~1/TEST_FRACTION draws per test problem; duplicates only when a split runs dry.
    max_draws = 50 * num_problems + 1000
    for _ in range(max_draws):
        if len(problems) == num_problems:
            break
        problem = _TEMPLATES[rng.integers(len(_TEMPLATES))](rng)
        if problem.key in seen or problem_split(problem.key) != split:
            continue
        seen.add(problem.key)
        solution = "\n".join([*problem.solution_lines, f"#### {problem.answer}"])
        problems.append(
            {
                "id": problem_id(problem.key),
                "instruction": problem.question,
                "input": "",
                "output": solution,
                "answer": str(problem.answer),
            }
        )
    if len(problems) < num_problems:
        raise ValueError(
            f"could only make {len(problems)} distinct {split} problems of {num_problems} asked; "
            "ask for fewer"
        )
    return problems
