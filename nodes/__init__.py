"""One module per graph node: router, planner, executor, approval, verifier, respond."""
