"""An MLflow pyfunc model that serves a .tflite file with the LiteRT interpreter.

Pickled by value (see register.py), so loading it needs mlflow, numpy and ai-edge-litert, not edgepipe.
Input: float32 images (N, H, W, C), normalised as the artifact metadata says. Output: class probabilities.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from components.runtimes import litert


class LiteRTClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self._run = litert(context.artifacts["tflite"], threads=1)

    # np.ndarray is a hint MLflow accepts without inferring a schema (it would warn on no hint); the
    # signature is logged from an input example instead (register.py).
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        logits = self._run(np.asarray(model_input, dtype=np.float32))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
