"""`pddm-tf export`: a `.keras` model (train --save_model) -> the next TF Serving version, with an optional
`search` gallery (BUILD.md, "Serving with TF Serving")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import flags

from pddm_tf.cli import settings
from pddm_tf.cli.command import Command, register_command
from pddm_tf.options import Bound, ConfigError, Setting
from pddm_tf.training import config_checks

flags.DEFINE_string("keras_model", None, "export: the .keras model file to export (from train --save_model).")
flags.DEFINE_string("gallery", None, "export: add a `search` signature over this gallery: 'folder:PATH' (every image "
                    "below PATH, id = its relative path) or a dataset name (its held-out images, id = class/file).")
flags.DEFINE_integer("search_k", 10, "export: neighbours returned by `search` (fixed in the SavedModel).")
flags.DEFINE_integer("search_rerank", 0, "export: `search` re-ranks the Euclidean top-R by the PDDM score "
                     "(R, fixed in the SavedModel; 0 = off).")

FLAGS = flags.FLAGS
#: The bounds of this command's own numeric flags.
_K = Setting(int, 10, "", Bound(1, 100_000))
_RERANK = Setting(int, 0, "", Bound(0, 100_000, note="0 = off"))


def check(values: Mapping[str, Any]) -> None:
    if not values.get("keras_model") or not values.get("export_dir"):
        raise ConfigError("export needs --keras_model (a .keras file, e.g. from train --save_model) and "
                          "--export_dir (the TF Serving base folder)")
    _K.parse("--search_k", values.get("search_k"))
    _RERANK.parse("--search_rerank", values.get("search_rerank"))
    config = settings.train_config(values)
    settings.config_module.FLAGS["max_image_pixels"][2].parse("--max_image_pixels", config.data.images.max_pixels)
    config_checks.check_input(values, "keras_model", kind="file")
    if values.get("search_rerank", 0) > 0 and not values.get("gallery"):
        raise ConfigError(f"--search_rerank={values['search_rerank']} re-ranks the results of `search`, which needs "
                          "--gallery")
    config_checks.check_dataset(values.get("gallery"), "gallery")
    config_checks.check_output_dir(values, "export_dir")
    config_checks.check_output_file(values, "json")


def run() -> dict[str, float]:
    # TensorFlow is imported at the CLI edge only: `pddm-tf --help` and refused flags must not pay for it.
    from pddm_tf import export
    from pddm_tf.data import transforms
    from pddm_tf.data.loaders import TFDS_NAMES

    config = settings.train_config()
    model = export.load_keras_model(FLAGS.keras_model)
    if FLAGS.search_rerank > 0 and getattr(model, "pddm", None) is None:
        raise ConfigError(f"--search_rerank={FLAGS.search_rerank} re-ranks by a learned PDDM score, but "
                          f"{FLAGS.keras_model} is a model without a PDDM unit")
    size, channels = export.image_geometry(model)
    # A model trained with --augment was evaluated on resized, centre-cropped images: serve the same.
    transform = transforms.eval_transform(size) if config.data.images.augment else None
    gallery = None
    if FLAGS.gallery:
        kwargs: dict[str, Any] = {}
        if FLAGS.gallery == "omniglot":
            kwargs.update(split_by=config.data.split_by)
        elif not FLAGS.gallery.startswith("folder:"):
            kwargs.update(channels=channels)
        if FLAGS.gallery in TFDS_NAMES:
            kwargs.update(data_dir=config.data.tfds.data_dir, cache_dir=config.data.tfds.cache_dir,
                          download=config.data.tfds.download, manual_dir=config.data.tfds.manual_dir)
        gallery = export.load_gallery(model, FLAGS.gallery, size, channels, test_fraction=config.data.test_fraction,
                                      seed=config.run.seed, batch_size=config.run.evaluation.batch_size,
                                      transform=transform, **kwargs)
        print(f"gallery {FLAGS.gallery}: {len(gallery.ids)} images embedded")
    path = export.export_saved_model(model, FLAGS.export_dir, size, channels, gallery=gallery,
                                     search_k=FLAGS.search_k, rerank=FLAGS.search_rerank, transform=transform,
                                     max_image_pixels=config.data.images.max_pixels)
    print(f"SavedModel exported to {path}")
    return {}


COMMAND = register_command(Command(name="export", summary="a .keras model -> the next TF Serving version (+ search)",
                                   run=run, check=check))
