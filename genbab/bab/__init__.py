"""Branch and bound over general nonlinear neurons: domains, branching heuristics, split points."""
