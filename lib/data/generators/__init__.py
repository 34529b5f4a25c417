"""Procedural dataset generators and their registry.

A generator is a module with a function::

    generate(num_examples: int, seed: int, **kwargs) -> Iterator[dict]

yielding ``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) label map (0 = background),
"factors": {name: small numpy array of a fixed shape}}``, deterministic given ``seed``.

``GENERATORS`` maps a built-in dataset name to the module and keyword arguments that make it.
Modules are imported only when a generator is asked for, so a missing optional renderer
(CLEVR) fails only when that dataset is generated.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GeneratorSpec:
    """How to generate one built-in dataset.

    Attributes:
        module: dotted module path holding ``generate``.
        kwargs: keyword arguments passed to ``generate`` besides ``num_examples`` and ``seed``.
    """

    module: str
    kwargs: Mapping[str, object] = field(default_factory=dict)


# Built-in dataset name -> generator. Add an entry to make another generated dataset.
GENERATORS: dict[str, GeneratorSpec] = {
    "tetrominoes": GeneratorSpec("lib.data.generators.tetrominoes"),
    "multi_dsprites": GeneratorSpec("lib.data.generators.multi_dsprites"),
    "clevr6": GeneratorSpec("lib.data.generators.clevr", {"min_objects": 3, "max_objects": 6}),
    "clevr10": GeneratorSpec("lib.data.generators.clevr", {"min_objects": 3, "max_objects": 10}),
    "sprites": GeneratorSpec("lib.data.generators.sprites"),
    # more objects than the quickstart saw in training: the generalisation test
    "sprites5": GeneratorSpec("lib.data.generators.sprites", {"max_objects": 5}),
}


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
    if name not in GENERATORS:
        raise KeyError(
            f"no generator for dataset {name!r}; generators exist for {list(GENERATORS)}"
        )
    spec = GENERATORS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImportError(
            f"the generator of dataset {name!r} ({spec.module}) cannot be imported: {exc}"
        ) from exc
    return functools.partial(module.generate, **dict(spec.kwargs))


def generator_description(name: str) -> dict:
    """Provenance of a registered generator.

    Args:
        name: a key of ``GENERATORS``.

    Returns:
        ``{"generator": module path, "generator_kwargs": {...}}``.
    """
    spec = GENERATORS[name]
    return {"generator": spec.module, "generator_kwargs": dict(spec.kwargs)}


__all__ = ["GENERATORS", "GeneratorSpec", "generator_description", "get_generator"]
