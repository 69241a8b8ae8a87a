"""`python -m pipeline sweep`: every (model, seed) as its own DVC experiment, on this machine
(the DVC queue) or as tasks of an existing Ray cluster, then `compare` over them.

- plan.py: which experiments a sweep is, and which of them are already done;
- checks.py: the setups refused before any work;
- local.py: `dvc exp run --queue` + `dvc queue start -j N`;
- task.py: what one Ray task does on a worker (clone, pull, run, push), no Ray in it, and
  the Job and Result types the other modules pass;
- ray_cluster.py: the only module that imports ray;
- run.py: the command itself: picks a runner (local or Ray) once, then ties them together.
"""
