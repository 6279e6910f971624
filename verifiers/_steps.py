"""Steps and step aggregation now live in the core (ttscale.steps); this name stays for plugins
that still import it."""

from ttscale.steps import STEP_SEPARATOR, Aggregation, aggregate, split_steps  # noqa: F401
