"""Test-time compute strategies, one file per strategy."""
