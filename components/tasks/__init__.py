"""What differs between tasks: data reader, model builder, loss, decoding and metrics. Detection
(components/tasks/detection) is built and tested here, and run end to end by bench/detection.py; the
pipeline's stages still classify only. Issue #13 adds `task:` to params.yaml to choose between them."""
