"""`edgepipe sweep`: many pipeline runs, one decision.

- plan: the candidates (a `-S key=v1,v2` grid, or an Optuna search) and the order that lets DVC's run cache
  reuse what candidates share;
- experiments: each candidate as a DVC experiment (`dvc exp run --temp`), read back from its git ref;
- decision: every candidate against the device profile's budgets, the best one that fits;
- pareto: the chart of score against flash, arena and latency with the budgets drawn.
The Prefect flow that runs them, logs the MLflow parent and child runs and releases the best candidate
is flows/sweep.py.
"""
