"""A generator that breaks the protocol: it stops after ``length`` examples (for the tests)."""

from collections.abc import Iterator

from lib.prepare.generators import sprites


def generate(num_examples: int, seed: int, length: int = 5) -> Iterator[dict]:
    """The first ``min(num_examples, length)`` sprites examples of ``seed``."""
    yield from sprites.generate(min(num_examples, length), seed)
