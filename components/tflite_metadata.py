"""The metadata edgepipe embeds in each .tflite file (labels, input shape, normalisation, format), read with
the TFLite flatbuffer schema that tflite-micro ships: reading it needs no TensorFlow, so the `mcu` stage
does not import it."""

from __future__ import annotations

import json
from pathlib import Path

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

METADATA_NAME = "edgepipe"


def read_tflite_metadata(path: Path) -> dict:
    """The "edgepipe" metadata entry of a .tflite file, or {} if it has none."""
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() is not None and entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    return {}
