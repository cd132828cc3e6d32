"""A gallery of embeddings in a vector database (Milvus; `pip install "pddm-tf[milvus]"`).

  milvus.py  `MilvusGallery`: one collection in Milvus Lite (a local file) or a Milvus server/cluster (a URI),
             with the embedding model's identity (`ModelInfo`) stored with it; `file_id` of an image's path.
  images.py  `list_images` of a folder and `ExportedEmbedder`, which embeds them with an exported SavedModel
             (imports TensorFlow).

`pddm-tf index` / `pddm-tf search` (pddm_tf/cli/commands/index.py, search.py) are built on them. pymilvus is imported
only when a `MilvusGallery` is made.
"""

from __future__ import annotations

from pddm_tf._lazy import lazy_attributes

_LAZY = {"MilvusGallery": "pddm_tf.vectordb.milvus", "ModelInfo": "pddm_tf.vectordb.milvus",
         "ModelMismatchError": "pddm_tf.vectordb.milvus", "file_id": "pddm_tf.vectordb.milvus",
         "ExportedEmbedder": "pddm_tf.vectordb.images", "ImageFile": "pddm_tf.vectordb.images",
         "list_images": "pddm_tf.vectordb.images"}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
