"""Grading a sample against gold: math answer extraction and equivalence, code answer
extraction and test-program assembly, and the sandbox that runs those programs.

Benchmarks (which hold the gold) grade with these; strategies and verifiers score samples
without gold and never import this package.
"""
