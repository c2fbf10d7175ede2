"""Prefect flows and the CLI around the components. Importing `components` first sets the environment
(legacy Keras, telemetry off) before TensorFlow or Prefect are imported."""

import components  # noqa: F401
