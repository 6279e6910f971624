"""Verifiers and graders, one file per verifier."""
