"""`pddm-tf search`: the nearest gallery images of a folder of queries, from a Milvus collection.

  pddm-tf search --model_dir=EXPORT --images=QUERY_FOLDER [--milvus_uri=gallery.db] [--json=FILE]
      the --top_k nearest gallery images of every query image (squared Euclidean distance, label, path),
      printed as a table, and Recall@K over the queries that have a label (parent folder name).

(BUILD.md, "Milvus"; the flags are `pddm_tf.cli.commands._gallery`'s.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from absl import flags

from pddm_tf import atomic
from pddm_tf.cli.command import Command, register_command
from pddm_tf.cli.commands._gallery import check, json_object, milvus_errors, open_gallery, recall_at_k

FLAGS = flags.FLAGS


@milvus_errors
def run() -> dict[str, float]:
    """`pddm-tf search`: the --top_k neighbours of every image below --images, and Recall@K by label."""
    # TensorFlow is imported at the CLI edge only: `pddm-tf --help` and refused flags must not pay for it.
    from pddm_tf import progress
    from pddm_tf.vectordb.images import ExportedEmbedder, list_images

    files = list_images(FLAGS.images)
    embedder = ExportedEmbedder(FLAGS.model_dir)
    gallery = open_gallery(embedder, create=False)
    queries, results = [], []
    for start in progress.bar(range(0, len(files), FLAGS.batch_size), desc="searching", unit="batch"):
        vectors, kept = embedder.embed(files[start:start + FLAGS.batch_size])
        if kept:
            queries += kept
            results += gallery.search(vectors, FLAGS.top_k, json_object("search_params"))
    gallery.close()
    for query, hits in zip(queries, results):
        print(f"\n{query.relative} (label {query.label or '-'})")
        print("  rank  distance    label                 path")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>4}  {hit['distance']:<10.4f}  {hit['label']:<20.20}  {hit['path']}")
    metrics = recall_at_k([q.label for q in queries], [[h["label"] for h in hits] for hits in results], FLAGS.top_k)
    if metrics:
        labelled = sum(1 for q in queries if q.label)
        print(f"\n{labelled} labelled queries: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if FLAGS.json:
        payload = {"model": embedder.info.__dict__, "collection": FLAGS.collection, "metrics": metrics,
                   "queries": [{"path": q.relative, "label": q.label, "neighbours": hits}
                               for q, hits in zip(queries, results)]}
        atomic.write_json(FLAGS.json, payload, indent=2)
    return metrics



def _check(values: Mapping[str, Any]) -> None:
    check("search", values)


register_command(Command(name="search", summary="search a Milvus collection with a folder of query images",
                         run=run, check=_check))
