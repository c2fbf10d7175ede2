"""The pipeline's steps for `task: detection` with `model.head: fomo` (components/tasks/detection/fomo.py):
each module's `run_stage(params, paths)` does what the SSD detector's module of the same name does, on
the same files; `prepare` is the SSD detector's (components/tasks/detection/stages/prepare.py)."""
