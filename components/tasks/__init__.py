"""What differs between tasks (params.yaml `task`): data reader, model builder, loss, decoding and metrics,
and the pipeline steps that use them. Classification's steps are the components/*.py modules; detection's
are components/tasks/detection/stages/*.py, chosen by components.stages for `task: detection`."""
