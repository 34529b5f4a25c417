"""Procedural dataset generators and their registry.

A generator is a module with a function::

    generate(num_examples: int, seed: int, **kwargs) -> Iterator[dict]

yielding ``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) label map (0 = background),
"factors": {name: small numpy array of a fixed shape}}``, deterministic given ``seed``.

Two kinds of streams:

- sequential (Tetrominoes, Multi-dSprites, sprites): one ``numpy.random.Generator`` drawn
  from ``seed`` runs through the whole stream, so example i depends on every example before
  it. Examples [a, b) are made by running the stream from its start and keeping [a, b).
- indexable (CLEVR): example i depends only on ``(seed, i)`` (``SeedSequence([seed, i])``)
  and ``generate`` takes ``start=i`` to begin there, so ranges are made independently (in
  parallel) with the same bytes.

``GENERATORS`` maps a built-in dataset name to the module and keyword arguments that make it.
Modules are imported only when a generator is asked for, so a missing optional renderer
(CLEVR) fails only when that dataset is generated.
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GeneratorSpec:
    """How to generate one built-in dataset.

    Attributes:
        module: dotted module path holding ``generate``.
        kwargs: keyword arguments passed to ``generate`` besides ``num_examples`` and ``seed``.
        indexable: ``generate`` accepts ``start`` and example i depends on ``(seed, i)`` only.
        chunk_size: examples per chunk file of an interrupted-and-resumed generation (small
            for slow generators, so little work is lost and the workers stay balanced).
    """

    module: str
    kwargs: Mapping[str, object] = field(default_factory=dict)
    indexable: bool = False
    chunk_size: int = 1000


# Built-in dataset name -> generator. Add an entry to make another generated dataset.
GENERATORS: dict[str, GeneratorSpec] = {
    "tetrominoes_synth": GeneratorSpec("lib.prepare.generators.tetrominoes"),
    "multi_dsprites_synth": GeneratorSpec("lib.prepare.generators.multi_dsprites"),
    "clevr6_synth": GeneratorSpec(
        "lib.prepare.generators.clevr",
        {"min_objects": 3, "max_objects": 6},
        indexable=True,
        chunk_size=64,
    ),
    "clevr10_synth": GeneratorSpec(
        "lib.prepare.generators.clevr",
        {"min_objects": 3, "max_objects": 10},
        indexable=True,
        chunk_size=64,
    ),
    "sprites": GeneratorSpec("lib.prepare.generators.sprites"),
    # more objects than the quickstart saw in training: the generalisation test
    "sprites5": GeneratorSpec("lib.prepare.generators.sprites", {"max_objects": 5}),
}


def _load(spec: GeneratorSpec, name: str) -> Callable[..., Iterator[dict]]:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImportError(
            f"the generator of dataset {name!r} ({spec.module}) cannot be imported: {exc}"
        ) from exc
    return functools.partial(module.generate, **dict(spec.kwargs))


def get_spec(name: str) -> GeneratorSpec:
    """The registered generator of a dataset.

    Args:
        name: a key of ``GENERATORS``.

    Returns:
        Its ``GeneratorSpec``.

    Raises:
        KeyError: no generator is registered under ``name`` (the message lists them).
    """
    if name not in GENERATORS:
        raise KeyError(
            f"no generator for dataset {name!r}; generators exist for {list(GENERATORS)}"
        )
    return GENERATORS[name]


def get_generator(name: str) -> Callable[[int, int], Iterator[dict]]:
    """Return the generate function of a registered dataset, its kwargs bound.

    Args:
        name: a key of ``GENERATORS``.

    Returns:
        ``fn(num_examples, seed) -> Iterator[dict]``.

    Raises:
        KeyError: no generator is registered under ``name`` (the message lists them).
        ImportError: the generator's module cannot be imported.
    """
    return _load(get_spec(name), name)


def generate_range(
    spec: GeneratorSpec, name: str, seed: int, start: int, stop: int
) -> Iterator[dict]:
    """Examples ``start .. stop - 1`` of the stream of ``seed``, the same bytes as examples
    ``start .. stop - 1`` of one ``generate(stop, seed)`` call.

    Args:
        spec: the generator.
        name: dataset name, for messages.
        seed: seed of the stream.
        start, stop: the range of example indices, ``0 <= start <= stop``.

    Returns:
        An iterator of example dicts. An indexable generator starts at ``start`` directly; a
        sequential one runs from example 0 and drops the first ``start`` examples.

    Raises:
        ImportError: the generator's module cannot be imported.
    """
    generate = _load(spec, name)
    if spec.indexable:
        return generate(stop - start, seed, start=start)
    return itertools.islice(generate(stop, seed), start, None)


__all__ = [
    "GENERATORS",
    "GeneratorSpec",
    "generate_range",
    "get_generator",
    "get_spec",
]
