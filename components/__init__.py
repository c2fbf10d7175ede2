"""edgepipe pipeline steps as plain functions (no Prefect imports).

This is the one place that sets the process environment the steps rely on, before anything imports
TensorFlow: tfmot needs the legacy tf-keras (Keras 2) API, and no tool here may phone home.
"""

import os

_ENV_DEFAULTS = {
    "TF_USE_LEGACY_KERAS": "1",  # tfmot rejects Keras 3 models; must be set before `import tensorflow`
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # OpenCV logs each model it cannot import; the validation matrix reports the same error as a cell
    "OPENCV_LOG_LEVEL": "OFF",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # not "Creating initial MLflow database tables..." on every store
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a tqdm bar per download clutters run output
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # Prefect's temporary server (a run without PREFECT_API_URL) gets 20 s to start by default, which a
    # busy 2-core machine can miss on first use.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
for _key, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
