"""Analysis: pass@k, summaries, curve fits and plots, all computed from samples.jsonl."""
