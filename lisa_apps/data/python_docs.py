"""``--data pydoc``: real English text, the Python Language Reference topics shipped with CPython.

CPython installs ``pydoc_data.topics`` (the text ``help("if")`` prints: the Language Reference's
topics, written by the Python documentation authors, under the PSF licence), so this set needs
no network and no file. Each topic is cut at paragraph (then line, then word) boundaries into
pieces of at most :data:`PIECE_CHARS` characters, and each piece becomes an instruction/response
pair: "Explain the Python topic 'X' (part i of n)." -> the piece. The loss is on the response
only, as for every instruction set, and there is no reference answer to score (``answer`` None).
The held-out split is the content hash of :func:`lisa_apps.data.split.jsonl_split` (10%), so it
is the same on every machine with the same Python version; a different CPython ships somewhat
different topics (``pydoc_data`` is regenerated with each release).
"""

from __future__ import annotations

from lisa_apps.data.split import jsonl_split

__all__ = ["PIECE_CHARS", "PYDOC_NAMES", "pydoc_examples", "split_text"]

#: The names ``--data`` accepts for this set.
PYDOC_NAMES = ("pydoc", "python-docs")
#: Longest response, in characters. With SmolLM2's tokenizer (49k BPE) a record, prompt and chat
#: template included, is 136 tokens on average and at most 281 (Python 3.11's topics), so
#: ``max_length`` 320 keeps every record whole and the study's 256 all but a few; the built-in
#: tiny models' byte-level tokenizer takes one token a byte: at most about 600.
PIECE_CHARS = 500


def split_text(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters at the widest boundary that fits.

    Paragraphs are kept whole and packed together while they fit; a longer paragraph is cut at
    line ends, a longer line at spaces, a longer word anywhere. Pieces are stripped, none empty.

    Example:
        >>> split_text("one two\\n\\nthree four five", limit=10)
        ['one two', 'three four', 'five']
    """
    pieces: list[str] = []
    for separator in ("\n\n", "\n", " "):
        if len(text) <= limit:
            break
        parts = text.split(separator)
        if len(parts) > 1:
            current = ""
            for part in parts:
                joined = f"{current}{separator}{part}" if current else part
                if len(joined) <= limit:
                    current = joined
                    continue
                if current:
                    pieces.append(current)
                if len(part) <= limit:
                    current = part
                else:
                    pieces.extend(split_text(part, limit))
                    current = ""
            if current:
                pieces.append(current)
            return [p.strip() for p in pieces if p.strip()]
    if len(text) <= limit:
        return [text.strip()] if text.strip() else []
    return [text[i : i + limit] for i in range(0, len(text), limit)]


def pydoc_examples(split: str = "all") -> list[dict]:
    """The topics as instruction/response pairs, in topic order: ``"train"``, ``"test"`` or all.

    Example:
        >>> examples = pydoc_examples("test")
        >>> sorted(examples[0]), examples[0]["answer"]
        (['answer', 'input', 'instruction', 'output'], None)
    """
    from pydoc_data.topics import topics

    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} is not one of ('train', 'test', 'all')")
    examples = []
    for topic in sorted(topics):
        pieces = split_text(topics[topic])
        for number, piece in enumerate(pieces, 1):
            examples.append({
                "instruction": f"Explain the Python topic {topic!r} (part {number} of {len(pieces)}).",
                "input": "",
                "output": piece,
                "answer": None,
            })  # fmt: skip
    if split == "all":
        return examples
    return [example for example in examples if jsonl_split(example) == split]
