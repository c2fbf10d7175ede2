"""model.pretrained: where a model's starting weights come from, and loading them into a new model.

- `imagenet` (mobilenet_v2): the ImageNet weights Keras' applications publish, read from the Keras cache
  (~/.keras/models, where keras.applications keeps them) and downloaded by Keras only when missing. Offline
  and missing ends in one message that names the file, its URL and where to put it; nothing is changed.
- a path: a .keras model or .h5 weights file, e.g. the models/float.keras of an earlier run on other data.
  Every layer whose name and weight shapes match is loaded; the others (the classifier head for other
  classes, a first conv for other input channels) start from scratch; the head (`logits`) always does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from components.config import IMAGENET_SIZES, ImageSpec, ModelConfig
from components.errors import EdgepipeError
from components.hashing import file_digest

# keras.applications.mobilenet_v2.BASE_WEIGHT_PATH; EDGEPIPE_KERAS_WEIGHTS_URL names a mirror of it (a site
# without internet access that keeps one)
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def imagenet_url() -> str:
    return os.environ.get("EDGEPIPE_KERAS_WEIGHTS_URL") or KERAS_WEIGHTS_URL


@dataclass(frozen=True)
class LoadedWeights:
    source: str  # what params.yaml said
    file: Path
    sha256: str
    layers_loaded: tuple[str, ...]  # layers that got pretrained weights (frozen in phase 1)
    layers_new: tuple[str, ...]  # layers with weights that start from scratch (always trained)


def imagenet_file_name(alpha: float, height: int, width: int) -> str:
    """The file keras.applications.MobileNetV2(include_top=False, weights="imagenet") loads. Keras has
    weights for 5 square sizes; for any other input it loads the 224 px ones (conv weights fit any size)."""
    rows = height if height == width and height in IMAGENET_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def keras_cache_dirs() -> tuple[Path, Path]:
    """Where keras.utils.get_file keeps downloads: ~/.keras/models, or /tmp/.keras/models when ~/.keras is
    not writable (tf-keras' rule), so a file may be in either."""
    return Path(os.path.expanduser("~/.keras")) / "models", Path("/tmp/.keras/models")


def weights_file(config: ModelConfig, image: ImageSpec, root: Path) -> Path | None:
    """The weights file model.pretrained names, fetched into the Keras cache if it must and can be;
    None for `none`. Called before any step runs, so a missing file changes nothing."""
    if config.pretrained == "none":
        return None
    if config.pretrained != "imagenet":
        path = Path(root) / config.pretrained
        if not path.is_file():
            raise EdgepipeError(
                f"model.pretrained: {path} not found. Give the path (relative to {root}) of a .keras model "
                "or .h5 weights file, e.g. the models/float.keras of an earlier run; or set it to none."
            )
        return path
    from components.prepare import resolve_image  # the same `auto` size prepare decides

    size = resolve_image(image, config.architecture, any_colour=True)
    name = imagenet_file_name(config.width_multiplier, size["height"], size["width"])
    cache = keras_cache_dirs()
    for folder in cache:
        if (folder / name).is_file():
            return folder / name
    cached = cache[0] / name
    from components.model import keras

    url = imagenet_url().rstrip("/") + "/" + name
    try:
        return Path(keras.utils.get_file(name, url, cache_dir=str(cache[0].parent)))
    except Exception as exc:  # no network, DNS, HTTP error: get_file removes its partial file
        reason = str(exc).strip() or type(exc).__name__
        raise EdgepipeError(
            f"model.pretrained: imagenet needs {name}, which is not in the Keras cache {cached.parent} and "
            f"could not be downloaded ({reason}). On a machine with internet, download {url} "
            f"and copy it to {cached}, then run again. Nothing was changed."
        ) from None


def load_weights(model, source: str, path: Path, fresh: tuple[str, ...] | None = None) -> LoadedWeights:
    """Copy every layer of `path` whose name and weight shapes match into `model`, except the `fresh`
    layers (default: the classifier head), whose classes differ in meaning even when their number
    matches (a detector passes its class heads)."""
    from components.model import HEAD_LAYER, load_model  # TensorFlow: only when a model is trained

    fresh = (HEAD_LAYER,) if fresh is None else fresh

    try:
        if path.suffix == ".h5":
            available = _h5_weight_shapes(path)
        else:
            donor = load_model(path)
            available = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in donor.layers}
    except (OSError, ValueError, KeyError) as exc:
        raise EdgepipeError(f"model.pretrained: {path} is not a readable Keras weights file: {exc}") from None
    with_weights = [layer for layer in model.layers if layer.weights]
    loaded = tuple(
        layer.name
        for layer in with_weights
        if layer.name not in fresh and available.get(layer.name) == [tuple(w.shape) for w in layer.weights]
    )
    if not loaded:
        raise EdgepipeError(
            f"model.pretrained: no layer of {path} matches the {model.name} model being trained (names and "
            "weight shapes differ). Use weights of the same model.architecture and width_multiplier."
        )
    if path.suffix == ".h5":
        kept = {layer.name: layer.get_weights() for layer in with_weights if layer.name in fresh}
        model.load_weights(str(path), by_name=True, skip_mismatch=True)  # the same name and shape rule
        for name, weights in kept.items():
            model.get_layer(name).set_weights(weights)
    else:
        for name in loaded:
            model.get_layer(name).set_weights(donor.get_layer(name).get_weights())
    new = tuple(layer.name for layer in with_weights if layer.name not in loaded)
    return LoadedWeights(source, path, file_digest(path), loaded, new)


def _h5_weight_shapes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> weight shapes in a tf-keras .h5 file (weights only, or a whole model)."""
    import h5py

    with h5py.File(path, "r") as h5:
        group = h5["model_weights"] if "layer_names" not in h5.attrs and "model_weights" in h5 else h5
        shapes = {}
        for raw_name in group.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            layer = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in layer.attrs["weight_names"]]
            shapes[name] = [tuple(layer[w].shape) for w in weight_names]
        return shapes
