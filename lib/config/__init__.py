"""Configuration: ``get_cfg()`` for the defaults, ``load_cfg()`` for a file plus overrides."""

from lib.config.config import get_cfg, load_cfg, validate_cfg

__all__ = ["get_cfg", "load_cfg", "validate_cfg"]
