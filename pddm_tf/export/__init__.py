"""Exports for serving: the TF Serving SavedModel and the `.keras` file of a trained model.

  saved_model.py  `export_saved_model` (TF Serving's `export_dir/<version>/` layout, written
                  atomically: `serving_default` from image bytes, `embed_pixels`, `pddm_similarity`,
                  `search`), `load_saved_model`, and `save_keras_model` / `load_keras_model`
  gallery.py      `Gallery`: the ids and embeddings that `search` retrieves from (`embed_gallery`,
                  `load_gallery`)
"""

from pddm_tf.export.gallery import Gallery, embed_gallery, load_gallery
from pddm_tf.export.saved_model import (
    export_saved_model,
    image_geometry,
    load_keras_model,
    load_saved_model,
    next_version,
    save_keras_model,
    saved_model_geometry,
)

__all__ = [
    "Gallery",
    "embed_gallery",
    "export_saved_model",
    "image_geometry",
    "load_gallery",
    "load_keras_model",
    "load_saved_model",
    "saved_model_geometry",
    "next_version",
    "save_keras_model",
]
