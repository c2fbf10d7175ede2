"""The pipeline's steps for `task: detection`: each module's `run_stage(params, paths)` does what the
classifier's module of the same name does (components.stages names both), reading and writing the same
files, so one dvc.yaml, one flow and one release serve both tasks."""
