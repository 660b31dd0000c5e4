"""Meta-evolution (work in progress)."""
