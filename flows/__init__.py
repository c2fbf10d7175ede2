"""Prefect flows and the CLI around the components. Importing `components` first sets the environment
(legacy Keras, telemetry off) before TensorFlow or Prefect are imported; Prefect's console handler is
ours (flows.console), so log messages print literally."""

import os

import components  # noqa: F401

os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", "flows.console.LiteralConsoleHandler")
