"""`pddm-tf index` and `pddm-tf search`: a gallery of images in a Milvus vector database.

  pddm-tf index --model_dir=EXPORT --images=FOLDER [--milvus_uri=gallery.db]
      embeds every image below FOLDER with the exported SavedModel (its `serving_default` signature) and
      upserts the vectors with their label (parent folder name) and path (relative to FOLDER), in batches
      of --batch_size, each flushed before the next. Row ids are derived from the relative path, and
      images already in the collection are skipped: after an interruption, the same command carries on.
  pddm-tf search --model_dir=EXPORT --images=QUERY_FOLDER [--milvus_uri=gallery.db] [--json=FILE]
      the --top_k nearest gallery images of every query image (squared Euclidean distance, label, path),
      printed as a table, and Recall@K over the queries that have a label (parent folder name).

--milvus_uri is a local file (Milvus Lite, the default: nothing to start) or http://host:19530 (a Milvus
server or cluster, --milvus_token for authentication); the commands are the same (BUILD.md, "Milvus").
The collection remembers the model it was built with; another model is refused (`ModelMismatchError`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags

from pddm_tf import atomic
from pddm_tf.cli import validation

FLAGS = flags.FLAGS
_LOG = logging.getLogger(__name__)

flags.DEFINE_string("images", None, "index, search: the folder of images (any depth; label = parent folder name).")
flags.DEFINE_string("milvus_uri", "pddm_gallery.db", "index, search: a Milvus Lite file (created if missing) or a "
                    "Milvus server/cluster URI, e.g. http://host:19530.")
flags.DEFINE_string("milvus_token", None, "index, search: Milvus authentication, 'user:password' or an API key.")
flags.DEFINE_string("collection", "pddm_gallery", "index, search: the Milvus collection.")
flags.DEFINE_enum("index_type", "HNSW", ["FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX"],
                  "index: the collection's vector index when it is created (FLAT = exact).")
flags.DEFINE_string("index_params", None, "index: JSON build parameters of --index_type, e.g. "
                    "'{\"M\": 16, \"efConstruction\": 200}' (defaults: pddm_tf.vectordb.milvus.INDEX_TYPES).")
flags.DEFINE_string("search_params", None, "search: JSON search parameters, e.g. '{\"ef\": 128}' for HNSW, "
                    "'{\"nprobe\": 32}' for IVF_FLAT.")
flags.DEFINE_integer("batch_size", 64, "index: images embedded and upserted per batch; search: queries per batch.")
flags.DEFINE_integer("top_k", 10, "search: neighbours per query (Recall@K is reported for K = 1, 2, 4, ... up to it).")

#: The commands of this module (name -> function), hooked into `pddm_tf.cli.main`.
COMMANDS: dict[str, Callable[[], dict[str, float]]] = {}


def _json_object(name: str, text: str | None = None) -> dict[str, int]:
    """The JSON object of integers that flag `name` holds (`text`, or the flag's value); FlagError if not."""
    text = FLAGS[name].value if text is None else text
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise validation.FlagError(f"--{name}: not JSON ({error})") from None
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise validation.FlagError(f"--{name}={text}: expected a JSON object of integers")
    return value


def check_flags(command: str, values: Mapping[str, Any]) -> None:
    """Refuses bad flag values (`values`: flag name -> value) of `pddm-tf index|search` before any work
    (`validation.FlagError`, exit code 2), without TensorFlow."""
    for name in ("model_dir", "images", "milvus_uri"):
        if not values.get(name):
            raise validation.FlagError(f"pddm-tf {command} needs --{name}")
    if values["batch_size"] < 1:
        raise validation.FlagError(f"--batch_size={values['batch_size']} is out of range: allowed >= 1")
    if not 1 <= values["top_k"] <= 16384:  # Milvus' limit on topk
        raise validation.FlagError(f"--top_k={values['top_k']} is out of range: allowed 1 to 16384")
    _json_object("index_params", values.get("index_params") or "")
    _json_object("search_params", values.get("search_params") or "")


def _milvus_errors(command: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """One line, not a traceback, for a missing pymilvus or an error of the Milvus server."""
    @functools.wraps(command)
    def run() -> dict[str, float]:
        if FLAGS.verbosity < 1:
            # Milvus Lite logs every compaction at INFO, and pymilvus logs each failed call with its traceback
            # before raising it (reported below in one line): both only with --verbosity=1.
            logging.getLogger("milvus_lite").setLevel(logging.WARNING)
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        try:
            return command()
        except ImportError as error:
            raise validation.FlagError(str(error)) from None
        except Exception as error:
            if type(error).__module__.startswith("pymilvus"):  # MilvusException and its kinds
                raise ConnectionError(f"Milvus at {FLAGS.milvus_uri}: {str(error).strip().splitlines()[0]}") from None
            raise

    COMMANDS[command.__name__] = run
    return run


def _gallery(embedder: Any, create: bool):
    from pddm_tf.vectordb.milvus import MilvusGallery

    gallery = MilvusGallery(FLAGS.milvus_uri, FLAGS.collection, FLAGS.milvus_token)
    return gallery.open(embedder.info, create=create, index_type=FLAGS.index_type,
                        index_params=_json_object("index_params"))


@_milvus_errors
def index() -> dict[str, float]:
    """`pddm-tf index`: embeds --images with --model_dir and upserts the images not yet in the collection."""
    from pddm_tf import progress
    from pddm_tf.vectordb.images import ExportedEmbedder, list_images

    files = list_images(FLAGS.images)
    embedder = ExportedEmbedder(FLAGS.model_dir)
    gallery = _gallery(embedder, create=True)
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


@_milvus_errors
def search() -> dict[str, float]:
    """`pddm-tf search`: the --top_k neighbours of every image below --images, and Recall@K by label."""
    from pddm_tf import progress
    from pddm_tf.vectordb.images import ExportedEmbedder, list_images

    files = list_images(FLAGS.images)
    embedder = ExportedEmbedder(FLAGS.model_dir)
    gallery = _gallery(embedder, create=False)
    queries, results = [], []
    for start in progress.bar(range(0, len(files), FLAGS.batch_size), desc="searching", unit="batch"):
        vectors, kept = embedder.embed(files[start:start + FLAGS.batch_size])
        if kept:
            queries += kept
            results += gallery.search(vectors, FLAGS.top_k, _json_object("search_params"))
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


def recall_at_k(query_labels: list[str], neighbour_labels: list[list[str]], top_k: int) -> dict[str, float]:
    """Recall@K for K = 1, 2, 4, ... <= top_k (and top_k): the fraction of labelled queries with a neighbour
    of their label among their K nearest (METHODS.md section 5); {} when no query has a label."""
    ks = sorted({k for k in (2 ** i for i in range(15)) if k <= top_k} | {top_k})
    pairs = [(q, n) for q, n in zip(query_labels, neighbour_labels) if q]
    if not pairs:
        return {}
    return {f"recall@{k}": sum(q in n[:k] for q, n in pairs) / len(pairs) for k in ks}
