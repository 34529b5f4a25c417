"""Procedural dataset generators and their registry.

A generator module's ``generate(num_examples, seed, **kwargs)`` yields ``{"image": uint8 (H, W,
3), "mask": uint8 (H, W) label map (0 = background), "factors": {name: fixed-shape array}}``,
the same bytes for the same seed: one random stream through all examples (sequential), or
example i from ``(seed, i)`` alone with ``start=i`` (indexable: CLEVR). Modules are imported
only when their dataset is generated.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GeneratorSpec:
    """How to generate one built-in dataset: the module holding ``generate``, its keyword
    arguments, whether it is indexable, and the examples per chunk file of a resumable
    generation (small for slow generators, so little work is lost)."""

    module: str
    kwargs: Mapping[str, object] = field(default_factory=dict)
    indexable: bool = False
    chunk_size: int = 1000


GENERATORS: dict[str, GeneratorSpec] = {
    "tetrominoes_synth": GeneratorSpec("lib.prepare.generators.tetrominoes"),
    "multi_dsprites_synth": GeneratorSpec("lib.prepare.generators.multi_dsprites"),
    "clevr6_synth": GeneratorSpec(
        "lib.prepare.generators.clevr", {"min_objects": 3, "max_objects": 6}, True, 64
    ),
    "clevr10_synth": GeneratorSpec(
        "lib.prepare.generators.clevr", {"min_objects": 3, "max_objects": 10}, True, 64
    ),
    "sprites": GeneratorSpec("lib.prepare.generators.sprites"),
    # more objects than the quickstart saw in training: the generalisation test
    "sprites5": GeneratorSpec("lib.prepare.generators.sprites", {"max_objects": 5}),
}


def get_spec(name: str) -> GeneratorSpec:
    """The registered generator of dataset ``name``; KeyError listing them if none."""
    if name not in GENERATORS:
        raise KeyError(
            f"no generator for dataset {name!r}; generators exist for {list(GENERATORS)}"
        )
    return GENERATORS[name]


def generate_range(
    spec: GeneratorSpec, name: str, seed: int, start: int, stop: int
) -> Iterator[dict]:
    """Examples ``start .. stop - 1`` of the stream of ``seed``: the bytes one
    ``generate(stop, seed)`` call makes for them (a sequential stream is replayed from 0).

    Raises:
        ImportError: the module cannot be imported (the message names dataset ``name``).
    """
    try:
        generate = importlib.import_module(spec.module).generate
    except ImportError as exc:
        raise ImportError(
            f"the generator of dataset {name!r} ({spec.module}) cannot be imported: {exc}"
        ) from exc
    if spec.indexable:
        return generate(stop - start, seed, start=start, **spec.kwargs)
    return itertools.islice(generate(stop, seed, **spec.kwargs), start, None)
