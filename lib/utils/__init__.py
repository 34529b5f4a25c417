"""The bottom layer: multi-process helpers (``comm``), logging (``logger``) and atomic file
writes (``io``). It imports nothing from ``lib`` outside ``lib.utils``."""
