"""What differs between tasks (classification, detection): data reader, model builder, loss, decoding and
metrics, each behind a small interface chosen by params.yaml's `task`."""
