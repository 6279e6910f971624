"""Benchmarks, one file per benchmark."""
