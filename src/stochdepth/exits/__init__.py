"""Early exit at test time: the exit criteria, their registry, and the policy."""
