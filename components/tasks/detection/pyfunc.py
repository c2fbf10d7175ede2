"""An MLflow pyfunc model that serves a detector .tflite (TFLite_Detection_PostProcess fused) with LiteRT.

Pickled by value with components.runtimes (as components/litert_pyfunc.py for classifiers), so loading it
needs mlflow, numpy and ai-edge-litert, not edgepipe. Input: float32 images (N, H, W, C), normalised as
the artifact metadata says. Output: {"boxes": (N, K, 4) normalised (ymin, xmin, ymax, xmax), "classes":
(N, K), "scores": (N, K), "count": (N,)}: the file's four outputs per image, K = its max_detections;
entries past `count` are padding.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from pathlib import Path

import cloudpickle
import mlflow.pyfunc
import numpy as np
from mlflow.models import infer_signature

import components.runtimes
from components.formats import RELEASE_FORMAT, get_format
from components.runtimes import litert, litert_interpreter, quantize

OUTPUT_NAMES = ("boxes", "classes", "scores", "count")  # the op's outputs, the file's order


class LiteRTDetector(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self._interpreter = litert_interpreter(context.artifacts["tflite"], threads=1)
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = [d["index"] for d in self._interpreter.get_output_details()]

    def predict(self, context, model_input: np.ndarray, params=None) -> dict[str, np.ndarray]:
        found = {name: [] for name in OUTPUT_NAMES}
        for image in np.asarray(model_input, dtype=np.float32):
            tensor = quantize(image[None], self._input["dtype"], *self._input["quantization"])
            self._interpreter.set_tensor(self._input["index"], tensor)
            self._interpreter.invoke()
            for name, index in zip(OUTPUT_NAMES, self._outputs, strict=True):
                found[name].append(self._interpreter.get_tensor(index)[0])
        return {
            "boxes": np.stack(found["boxes"]).astype(np.float32),
            # padding past `count` may hold NaN: 0 there, as the scores are 0
            "classes": np.nan_to_num(np.stack(found["classes"])).astype(np.int64),
            "scores": np.stack(found["scores"]).astype(np.float32),
            "count": np.stack(found["count"]).reshape(-1).astype(np.int64),
        }


class LiteRTFomo(mlflow.pyfunc.PythonModel):
    """A FOMO .tflite in LiteRT: {"heatmap": (N, H/8, W/8, classes + 1)}, dequantised softmax scores per
    cell, channel 0 background (components/tasks/detection/fomo.py decodes it to object centres)."""

    def load_context(self, context) -> None:
        self._run = litert(context.artifacts["tflite"], threads=1)

    def predict(self, context, model_input: np.ndarray, params=None) -> dict[str, np.ndarray]:
        return {"heatmap": self._run(np.asarray(model_input, dtype=np.float32)).astype(np.float32)}


# What the logged pyfunc needs to load and run, at the versions installed here (requirements.lock's)
REQUIREMENTS = [f"{name}=={package_version(name)}" for name in ("mlflow", "numpy", "ai-edge-litert")]


def log_fomo_models(export_dir: Path, x_example: np.ndarray, sha256: str):
    """The release FOMO .tflite as a pyfunc that returns the heatmap; returns its model info."""
    return log_detector_models(export_dir, x_example, sha256, LiteRTFomo)


def log_detector_models(export_dir: Path, x_example: np.ndarray, sha256: str, kind=LiteRTDetector):
    """The release detector .tflite as a pyfunc (`kind`) that returns boxes, classes, scores and count;
    returns its model info (what a version registers). The ONNX files stay run artifacts: their raw
    outputs need the anchors in their metadata to decode."""
    import sys

    release = get_format(RELEASE_FORMAT, "detection")
    tflite = release.path(export_dir)
    model = kind()
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    cloudpickle.register_pickle_by_value(components.runtimes)
    try:
        model.load_context(type("Context", (), {"artifacts": {"tflite": str(tflite)}})())
        signature = infer_signature(x_example, model.predict(None, x_example))
        for name in ("_interpreter", "_run"):  # not picklable; load_context opens them where it is served
            model.__dict__.pop(name, None)
        return mlflow.pyfunc.log_model(
            name=release.name,
            python_model=model,
            artifacts={"tflite": str(tflite)},
            signature=signature,
            input_example=x_example,
            pip_requirements=REQUIREMENTS,
            metadata={"edgepipe_format": release.name, "task": "detection", "sha256": sha256},
        )
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        cloudpickle.unregister_pickle_by_value(components.runtimes)
