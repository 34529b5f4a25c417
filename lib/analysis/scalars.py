"""Scalars of TensorBoard event files, as ``lib/engine/trainer.py`` logs them."""

from __future__ import annotations

import os
from collections.abc import Iterable


def read_scalars(logdir: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar of the TensorBoard event files in a folder.

    Args:
        logdir: folder holding ``events.out.tfevents.*`` (a resumed run adds files; they are
            read in order, and a step logged twice keeps its latest value).

    Returns:
        ``{tag: (steps, values)}`` with steps increasing; empty when the folder holds none.

    Raises:
        FileNotFoundError: ``logdir`` is not a folder.
    """
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"no folder {logdir}")
    # Imported here: tensorboard's event reader is slow to import and only this needs it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir, size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags().get("scalars", []):
        by_step: dict[int, tuple[float, float]] = {}
        for event in accumulator.Scalars(tag):
            previous = by_step.get(event.step)
            if previous is None or event.wall_time >= previous[0]:
                by_step[event.step] = (event.wall_time, float(event.value))
        steps = sorted(by_step)
        out[tag] = (steps, [by_step[s][1] for s in steps])
    return out


def per_step_tags(tags: Iterable[str], prefix: str) -> list[tuple[int, str]]:
    """The tags ``<prefix><t>`` of one quantity per refinement step (e.g. ``loss/nll_t3``).

    Args:
        tags: scalar tags (e.g. the keys of ``read_scalars``).
        prefix: the part before the step number, e.g. ``"loss/nll_t"``.

    Returns:
        ``(t, tag)`` pairs sorted by t; tags whose rest is not a plain number are left out.
    """
    found = []
    for tag in tags:
        rest = tag[len(prefix) :]
        if tag.startswith(prefix) and rest.isdigit():
            found.append((int(rest), tag))
    return sorted(found)
