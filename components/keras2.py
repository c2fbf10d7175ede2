"""tf-keras (Keras 2) only: tensorflow-model-optimization imported without loading Keras 3.

TensorFlow installs Keras 3, which edgepipe never uses (TF_USE_LEGACY_KERAS: tf.keras is tf-keras). tfmot's
pruning registry still runs `from keras.src.engine import base_layer` only to learn that models are not Keras
3 ones (it fails on Keras 3 and leaves `base_layer` None); the import of Keras 3 costs about 5 s of CPU. With
`keras` marked as not importable for that moment the same ImportError comes at once and tfmot ends in the
state it reaches with Keras 3 loaded; outside it Keras 3 stays importable for anything that asks for it.
(The TFLite converter's own Keras 3 check is not reached: components.export_tflite converts a concrete
function, not a Keras model.)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import tensorflow  # noqa: F401  (tfmot's import reads TF_USE_LEGACY_KERAS through TensorFlow)


@contextlib.contextmanager
def _without_keras3() -> Iterator[None]:
    """`import keras` raises ImportError inside the block, unless Keras 3 is loaded already."""
    if "keras" in sys.modules:
        yield
        return
    sys.modules["keras"] = None  # type: ignore[assignment]  (None: Python's "not importable" marker)
    try:
        yield
    finally:
        if sys.modules.get("keras") is None:
            del sys.modules["keras"]


with _without_keras3():
    import tensorflow_model_optimization as tfmot

__all__ = ["tfmot"]
