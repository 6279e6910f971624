"""Selection rules now live in the core (ttscale.selection); this name stays for plugins that
still import it."""

from ttscale.selection import answer_groups, first_answer, majority_vote, max_score, weighted_vote  # noqa: F401
