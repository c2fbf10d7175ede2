"""An MLflow pyfunc model that serves a detector .tflite (TFLite_Detection_PostProcess fused) with LiteRT.

Pickled by value with components.runtimes (as components/litert_pyfunc.py for classifiers), so loading it
needs mlflow, numpy and ai-edge-litert, not edgepipe. Input: float32 images (N, H, W, C), normalised as
the artifact metadata says. Output: {"boxes": (N, K, 4) normalised (ymin, xmin, ymax, xmax), "classes":
(N, K), "scores": (N, K), "count": (N,)}: the file's four outputs per image, K = its max_detections;
entries past `count` are padding.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from components.runtimes import litert_interpreter, quantize

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
            "classes": np.stack(found["classes"]).astype(np.int64),
            "scores": np.stack(found["scores"]).astype(np.float32),
            "count": np.stack(found["count"]).reshape(-1).astype(np.int64),
        }
