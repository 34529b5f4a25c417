"""Deprecated location: the tool plumbing is ``lib.cli``, process set-up ``lib.engine.setup``.

Kept for one release so that external scripts importing from here keep working.
"""

from lib.cli import (  # noqa: F401
    LOGGER_NAME,
    build_datasets,
    default_argument_parser,
    load_tool_cfg,
    parse_tool_args,
    run_tool,
    tool_session,
)
from lib.engine.setup import (  # noqa: F401
    RunError,
    load_weights,
    resolve_device,
    seed_all,
    setup_precision,
    wrap_distributed,
)
