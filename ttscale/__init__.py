"""ttscale: a test-time compute scaling harness for LLMs."""

__version__ = "0.1.0"

from ttscale.allocation.policy import AllocationPolicy  # noqa: E402

# Bound last, so that `ttscale.solve` is the function, not the submodule of the same name (which
# the line above imports); neither imports vllm or torch.
from ttscale.solve import solve  # noqa: E402

__all__ = ["AllocationPolicy", "solve", "__version__"]
