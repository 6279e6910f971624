"""ttscale: a test-time compute scaling harness for LLMs."""

__version__ = "0.1.0"

# Bound here so that `ttscale.solve` is the function, not the submodule of the same name; it
# imports only light modules (pydantic types, the cost meter), never vllm.
from ttscale.solve import solve  # noqa: E402

__all__ = ["AllocationPolicy", "solve", "__version__"]


def __getattr__(name: str):
    """AllocationPolicy loads on first use (it pulls in numpy), keeping `import ttscale` light."""
    if name == "AllocationPolicy":
        from ttscale.allocation.policy import AllocationPolicy

        return AllocationPolicy
    raise AttributeError(f"module 'ttscale' has no attribute {name!r}")
