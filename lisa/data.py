"""Fine-tuning data: a seeded maths word-problem generator, a JSONL loader, tokenisation, collation.

An *example* is a dict with ``"instruction"``, ``"input"`` (may be ``""``), ``"output"`` (the
response to learn) and ``"answer"`` (the final numeric answer as a string, or ``None`` when the
example has none). Worked solutions end in a GSM8K-style answer line ``#### 42``;
:func:`extract_answer` reads that line back (and falls back to the last number in free text, so
it also scores a model that has not learnt the format yet).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
# Share of problems (by hash of their canonical form) that belong to the test split.
TEST_FRACTION = 0.2
# Share of a user's JSONL records (by hash of their content) held out as the test split.
JSONL_TEST_FRACTION = 0.1
DEFAULT_NUM_EXAMPLES = {"train": 1000, "test": 200}
IGNORE_INDEX = -100  # label value that torch's cross-entropy skips

# ---------------------------------------------------------------------------------------------
# Maths word problems
# ---------------------------------------------------------------------------------------------

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
    if num_problems < 0:
        raise ValueError(f"num_problems={num_problems} must be >= 0")
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


_FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """Read the final numeric answer from a solution or a model's generated text.

    Order: the first ``#### N`` line; else the last "the answer is N"; else the last number in
    the text. Thousands separators are removed and a trailing ``.0`` is dropped, so ``"1,200"``
    and ``"1200.0"`` both give ``"1200"``.

    Args:
        text: the solution text.

    Returns:
        The answer as a canonical number string, or ``None`` when the text has no number.

    Example:
        >>> extract_answer("3 * 4 = 12.\\n#### 12")
        '12'
        >>> extract_answer("So the answer is $1,200.") is not None
        True
    """
    match = _FINAL_ANSWER.search(text)
    if match is None:
        found = _ANSWER_IS.findall(text)
        candidate = found[-1] if found else None
        if candidate is None:
            numbers = _NUMBER.findall(text)
            candidate = numbers[-1] if numbers else None
    else:
        candidate = match.group(1)
    if candidate is None:
        return None
    return normalize_number(candidate)


def normalize_number(text: str) -> str | None:
    """Canonicalise a number string: drop commas and ``$``, integers without ``.0``.

    Args:
        text: e.g. ``"1,200"``, ``"$42"``, ``"7.50"``.

    Returns:
        ``"1200"``, ``"42"``, ``"7.5"``; ``None`` when it is not a number.
    """
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value.is_integer():
        return str(int(value))
    return repr(value)


# ---------------------------------------------------------------------------------------------
# User JSONL
# ---------------------------------------------------------------------------------------------

# Accepted spellings per field, canonical name first. "answer" alone (GSM8K's layout) serves as
# the output; next to an explicit output it is the short final answer.
_FIELD_ALIASES = {
    "instruction": ("instruction", "prompt", "question"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion"),
}


def load_jsonl(path: str | Path) -> list[dict]:
    """Read instruction-tuning examples from a JSONL file, one JSON object per line.

    Each line holds ``"instruction"``, optional ``"input"`` and ``"output"`` (Alpaca's fields;
    also accepted: ``prompt``/``question`` for the instruction, ``context`` for the input,
    ``response``/``completion`` for the output, and GSM8K's ``question``/``answer`` pair).
    An optional ``"answer"`` next to the output is the short final answer used for accuracy;
    without it, the answer is read from the output with :func:`extract_answer`.
    An input of ``null`` means no input. Blank (whitespace-only) lines are skipped: they hold
    no record, so nothing is lost.
    Every other problem raises; no record is dropped silently.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        Examples with ``"instruction"``, ``"input"``, ``"output"``, ``"answer"``, in file order.

    Raises:
        ValueError: naming the file, line number and what is wrong (bad JSON, not an object,
            missing or ambiguous field, non-string value, empty instruction or output), or
            that the file holds no records.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    examples: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            examples.append(_parse_record(line, f"{path}:{line_number}"))
    if not examples:
        raise ValueError(f"{path}: no records found; expected one JSON object per line")
    return examples


def _parse_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields: dict[str, str] = {}
    for field, aliases in _FIELD_ALIASES.items():
        present = [alias for alias in aliases if alias in record]
        if len(present) > 1:
            raise ValueError(f"{where}: fields {present} all mean {field!r}; keep one")
        if present:
            fields[field] = _string_field(record, present[0], where)
    answer = _string_field(record, "answer", where) if "answer" in record else None
    if "output" not in fields and answer is not None:
        fields["output"], answer = answer, None  # GSM8K layout: the answer is the solution
    for field in ("instruction", "output"):
        if field not in fields:
            raise ValueError(
                f"{where}: missing field {field!r} (accepted names: {_FIELD_ALIASES[field]}); "
                f"found {sorted(record)}"
            )
        if not fields[field].strip():
            raise ValueError(f"{where}: field {field!r} is empty")
    output = fields["output"]
    final = normalize_number(answer) if answer is not None else extract_answer(output)
    if answer is not None and final is None:
        final = answer.strip()  # a non-numeric answer still scores by exact match
    return {
        "instruction": fields["instruction"],
        "input": fields.get("input", ""),
        "output": output,
        "answer": final,
    }


def _string_field(record: dict, name: str, where: str) -> str:
    value = record[name]
    if name in _FIELD_ALIASES["input"] and value is None:
        return ""  # an optional input written as null means no input
    # Numbers are fine as answers ("answer": 42); elsewhere a non-string is a mistake.
    if name == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def jsonl_split(example: dict) -> str:
    """Return the split a user example belongs to: ``JSONL_TEST_FRACTION`` of them are "test".

    Decided by a SHA-256 of the example's instruction, input and output, so it is stable when
    records are added, removed or reordered, and duplicates always land together.

    Args:
        example: a dict with ``"instruction"``, ``"input"`` and ``"output"``.

    Returns:
        ``"train"`` or ``"test"``.
    """
    content = json.dumps([example["instruction"], example["input"], example["output"]])
    bucket = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < JSONL_TEST_FRACTION else "train"


def load_examples(
    spec: str, *, split: str = "train", num_examples: int | None = None, seed: int = 0
) -> list[dict]:
    """Load examples by spec: ``"math"`` (the generator) or a path to a ``.jsonl`` file.

    For ``"math"``, ``num_examples`` defaults to 1000 (train) or 200 (test) and ``seed`` seeds
    the generator. For a JSONL file, the held-out split is deterministic: an example is "test"
    when a hash of its content falls in the lowest ``JSONL_TEST_FRACTION`` (10%), see
    :func:`jsonl_split`; ``split="all"`` returns every record. ``num_examples`` then keeps a
    ``seed``-chosen subset in file order.

    Args:
        spec: ``"math"`` or a path to a ``.jsonl`` file.
        split: ``"train"``, ``"test"`` (or ``"all"`` for a file).
        num_examples: how many examples to return; ``None`` for the default / all.
        seed: generator seed, or subset seed for a file.

    Returns:
        A list of examples (see the module docstring).

    Raises:
        ValueError: unknown spec or split, or a split that came out empty.
    """
    if spec == "math":
        count = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
        return make_math_problems(count, seed=seed, split=split)
    path = Path(spec)
    if path.suffix != ".jsonl" or not path.is_file():
        raise ValueError(f"data spec {spec!r} is neither 'math' nor an existing .jsonl file")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split={split!r} is not one of {(*SPLITS, 'all')}")
    examples = load_jsonl(path)
    if split != "all":
        examples = [example for example in examples if jsonl_split(example) == split]
    if not examples:
        raise ValueError(
            f"{path}: no {split} examples; about {JSONL_TEST_FRACTION:.0%} of the records are "
            "held out by a hash of their content, so add records or use split='all'"
        )
    if num_examples is not None and num_examples < len(examples):
        chosen = np.sort(
            np.random.default_rng(seed).choice(len(examples), num_examples, replace=False)
        )
        examples = [examples[index] for index in chosen]
    return examples


# ---------------------------------------------------------------------------------------------
# Tokenisation and collation
# ---------------------------------------------------------------------------------------------


def user_message(example: dict) -> str:
    """Return the user turn of an example: the instruction, then the input on a new paragraph.

    Args:
        example: a dict with ``"instruction"`` and optional ``"input"``.

    Returns:
        The user message text.
    """
    extra = example.get("input") or ""
    return f"{example['instruction']}\n\n{extra}" if extra.strip() else example["instruction"]


def prompt_text(example: dict, tokenizer) -> str:
    """Return the chat-formatted prompt (user turn plus the assistant header) of an example.

    Args:
        example: a dict with ``"instruction"`` and optional ``"input"``.
        tokenizer: a tokenizer with a chat template.

    Returns:
        The text a model continues to answer.
    """
    messages = [{"role": "user", "content": user_message(example)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_examples(examples: Sequence[dict], tokenizer, *, max_length: int = 256) -> list[dict]:
    """Tokenise examples with the chat template, masking the prompt so loss is on the response.

    The prompt (user turn + assistant header) and the response (the rest of the templated
    conversation: output and end-of-turn tokens) are tokenised separately and concatenated,
    so the boundary is exact: ``labels`` are ``-100`` on every prompt token and equal
    ``input_ids`` on every response token.

    Truncation rule: the prompt is kept whole and the response is cut at its end to fit
    ``max_length``. An example whose prompt leaves no room for a response token is skipped;
    skipped and truncated counts are logged as warnings, and if every example would be
    skipped a ValueError is raised.

    Args:
        examples: dicts with ``"instruction"``, optional ``"input"``, ``"output"``.
        tokenizer: a tokenizer with a chat template.
        max_length: the longest sequence, in tokens (>= 2).

    Returns:
        One dict per kept example with ``"input_ids"``, ``"attention_mask"``, ``"labels"``
        (lists of int of the same length).
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 (a prompt and a response)")
    features: list[dict] = []
    skipped: list[int] = []
    truncated = 0
    for index, example in enumerate(examples):
        prompt = prompt_text(example, tokenizer)
        messages = [
            {"role": "user", "content": user_message(example)},
            {"role": "assistant", "content": example["output"]},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render the prompt as a prefix of the conversation; "
                "tokenize_examples needs a template where it does (e.g. ChatML)"
            )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        room = max_length - len(prompt_ids)
        if room < 1:
            skipped.append(index)
            continue
        if len(response_ids) > room:
            truncated += 1
            response_ids = response_ids[:room]
        input_ids = prompt_ids + response_ids
        features.append(
            {
                "input_ids": input_ids,
                "attention_mask": [1] * len(input_ids),
                "labels": [IGNORE_INDEX] * len(prompt_ids) + list(response_ids),
            }
        )
    if skipped:
        logger.warning(
            "skipped %d of %d examples whose prompt fills max_length=%d (first: %s)",
            len(skipped), len(examples), max_length, skipped[:5],
        )  # fmt: skip
    if truncated:
        logger.warning(
            "truncated the response of %d of %d examples to fit max_length=%d",
            truncated, len(examples), max_length,
        )  # fmt: skip
    if examples and not features:
        raise ValueError(
            f"every example's prompt is at least max_length={max_length} tokens; raise max_length"
        )
    return features


class DataCollator:
    """Pad tokenised examples into a batch: pad id for inputs, 0 for the mask, -100 for labels.

    Right padding (training). Build it from a tokenizer or a pad id directly.

    Example:
        >>> collate = DataCollator(pad_token_id=0)
        >>> batch = collate([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]},
        ...                  {"input_ids": [7], "attention_mask": [1], "labels": [7]}])
        >>> batch["labels"].tolist()
        [[-100, 6], [7, -100]]
    """

    def __init__(self, tokenizer=None, *, pad_token_id: int | None = None):
        if pad_token_id is None:
            if tokenizer is None or tokenizer.pad_token_id is None:
                raise ValueError(
                    "DataCollator needs a pad id: pass a tokenizer with a pad token or pad_token_id=..."
                )
            pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(feature["input_ids"]) for feature in features)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, pad_value in pad_values.items():
            rows = [
                list(feature[key]) + [pad_value] * (length - len(feature[key]))
                for feature in features
            ]
            batch[key] = torch.tensor(rows, dtype=torch.long)  # (batch, length)
        return batch
