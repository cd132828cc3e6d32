"""`pddm-tf index`: embed a folder of images with an exported model into a Milvus collection.

  pddm-tf index --model_dir=EXPORT --images=FOLDER [--milvus_uri=gallery.db]
      embeds every image below FOLDER with the exported SavedModel (its `serving_default` signature) and
      upserts the vectors with their label (parent folder name) and path (relative to FOLDER), in batches
      of --batch_size, each flushed before the next. Row ids are derived from the relative path, and
      images already in the collection are skipped: after an interruption, the same command carries on.

(BUILD.md, "Milvus"; the flags are `pddm_tf.cli.commands._gallery`'s.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from absl import flags

from pddm_tf.cli.command import Command, register_command
from pddm_tf.cli.commands._gallery import check, milvus_errors, open_gallery

FLAGS = flags.FLAGS
_LOG = logging.getLogger(__name__)


@milvus_errors
def run() -> dict[str, float]:
    """`pddm-tf index`: embeds --images with --model_dir and upserts the images not yet in the collection."""
    # TensorFlow is imported at the CLI edge only: `pddm-tf --help` and refused flags must not pay for it.
    from pddm_tf import progress
    from pddm_tf.vectordb.images import ExportedEmbedder, list_images

    files = list_images(FLAGS.images)
    embedder = ExportedEmbedder(FLAGS.model_dir)
    gallery = open_gallery(embedder, create=True)
    present = gallery.present_ids([f.id for f in files])
    todo = [f for f in files if f.id not in present]
    print(f"{len(files)} images below {FLAGS.images}: {len(present)} already in {FLAGS.collection!r}, "
          f"{len(todo)} to index with {embedder.info.describe()}", flush=True)
    batches = -(-len(todo) // FLAGS.batch_size)
    written = 0
    with progress.bar(total=len(todo), desc="indexing", unit="image") as bar:
        for number, start in enumerate(range(0, len(todo), FLAGS.batch_size), 1):
            vectors, kept = embedder.embed(todo[start:start + FLAGS.batch_size])
            if kept:
                gallery.upsert([f.id for f in kept], vectors, [f.label for f in kept], [f.relative for f in kept])
            written += len(kept)
            bar.update(len(todo[start:start + FLAGS.batch_size]))
            _LOG.info("batch %d/%d upserted (%d images)", number, batches, written)
    total = gallery.count()
    print(f"{written} images upserted; {FLAGS.collection!r} at {FLAGS.milvus_uri} holds {total}")
    gallery.close()
    return {"upserted": float(written), "count": float(total)}



def _check(values: Mapping[str, Any]) -> None:
    check("index", values)


register_command(Command(name="index", summary="embed a folder of images with an export into a Milvus collection",
                         run=run, check=_check))
