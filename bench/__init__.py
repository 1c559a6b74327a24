"""`python -m bench`: load scenarios against relay and its baselines, with budgets."""
