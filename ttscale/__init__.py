"""ttscale: a test-time compute scaling harness for LLMs."""

__version__ = "0.1.0"
