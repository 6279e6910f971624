"""Backends: vllm (the only module that imports vLLM), fake."""
