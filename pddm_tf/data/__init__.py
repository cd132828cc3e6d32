"""Datasets for deep metric learning: labelled file lists, decoding and class-balanced batches.

Images are never held in memory: loaders return `ImageFiles` (paths + labels) and the `tf.data`
pipelines read and decode files on the fly. Metric-learning splits are by class: the test classes
are never seen in training (zero-shot retrieval / clustering protocol).

  files.py         `ImageFiles`, `DatasetSplit`, `with_rotations`
  splits.py        which classes are held out, and the train / test split
  image_header.py  image sizes read from PNG / JPEG / GIF / BMP headers (TF ops) and the pixel limit
                   (`MAX_IMAGE_PIXELS`) that refuses decompression bombs before any decoding
  decode.py        decoding image files with TensorFlow ops (training, evaluation and the SavedModel)
  transforms.py    the papers' image transforms: random resized crop + flip, resize + centre crop
  loaders.py       Omniglot, `folder:PATH`, the `DATASETS` registry and `load_dataset`
  sampling.py      class-balanced P x K training batches and the evaluation pipeline
  batch_checks.py  what P x K batches a file list allows (steps per pass, refusals)
  tfds_loaders.py  CUB-200-2011, Cars196, SOP, Omniglot and ImageNet through TensorFlow Datasets; not
                   imported here (tensorflow_datasets is slow to import): `load_dataset` imports it
                   for a TFDS name, or `from pddm_tf.data import tfds_loaders`
"""

from pddm_tf.data.batch_checks import SMALL_CLASSES, steps_per_pass
from pddm_tf.data.decode import MAGIC_NUMBERS, decode_image, decode_images, image_format_known, read_image
from pddm_tf.data.files import DatasetSplit, ImageFiles, with_rotations
from pddm_tf.data.image_header import check_batch_pixel_limit, check_pixel_limit
from pddm_tf.data.loaders import DATASETS, FOLDER_PREFIX, IMAGE_EXTENSIONS, load_dataset, load_folder, load_omniglot
from pddm_tf.data.sampling import (
    balanced_batch_indices,
    class_balanced_dataset,
    class_balanced_dataset_from_arrays,
    evaluation_dataset,
    from_step,
    shard_size,
)
from pddm_tf.data.splits import (
    SPLIT_BY,
    check_channels,
    check_test_fraction,
    random_class_mask,
    split_classes,
    test_class_mask,
)
from pddm_tf.data.transforms import Transform, affine_transform, eval_transform, train_transform

__all__ = [
    "DATASETS",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "MAGIC_NUMBERS",
    "SMALL_CLASSES",
    "SPLIT_BY",
    "DatasetSplit",
    "ImageFiles",
    "Transform",
    "affine_transform",
    "balanced_batch_indices",
    "check_batch_pixel_limit",
    "check_channels",
    "check_pixel_limit",
    "check_test_fraction",
    "class_balanced_dataset",
    "class_balanced_dataset_from_arrays",
    "decode_image",
    "decode_images",
    "eval_transform",
    "evaluation_dataset",
    "from_step",
    "image_format_known",
    "load_dataset",
    "load_folder",
    "load_omniglot",
    "random_class_mask",
    "read_image",
    "shard_size",
    "split_classes",
    "steps_per_pass",
    "test_class_mask",
    "train_transform",
    "with_rotations",
]
