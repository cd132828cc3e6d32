"""What `pddm-tf index` and `pddm-tf search` share: their flags, checks and the Milvus gallery they open.

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

from pddm_tf.options import ConfigError

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

def json_object(name: str, text: str | None = None) -> dict[str, int]:
    """The JSON object of integers that flag `name` holds (`text`, or the flag's value); FlagError if not."""
    text = FLAGS[name].value if text is None else text
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"--{name}: not JSON ({error})") from None
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        raise ConfigError(f"--{name}={text}: expected a JSON object of integers")
    return value


def check(command: str, values: Mapping[str, Any]) -> None:
    """Refuses bad flag values (`values`: flag name -> value) of `pddm-tf index|search` before any work
    (`ConfigError`, exit code 2), without TensorFlow."""
    for name in ("model_dir", "images", "milvus_uri"):
        if not values.get(name):
            raise ConfigError(f"pddm-tf {command} needs --{name}")
    if values["batch_size"] < 1:
        raise ConfigError(f"--batch_size={values['batch_size']} is out of range: allowed >= 1")
    if not 1 <= values["top_k"] <= 16384:  # Milvus' limit on topk
        raise ConfigError(f"--top_k={values['top_k']} is out of range: allowed 1 to 16384")
    json_object("index_params", values.get("index_params") or "")
    json_object("search_params", values.get("search_params") or "")


def milvus_errors(command: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
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
            raise ConfigError(str(error)) from None
        except Exception as error:
            if type(error).__module__.startswith("pymilvus"):  # MilvusException and its kinds
                raise ConnectionError(f"Milvus at {FLAGS.milvus_uri}: {str(error).strip().splitlines()[0]}") from None
            raise

    return run


def open_gallery(embedder: Any, create: bool) -> Any:
    """The --collection of --milvus_uri for `embedder`'s model (created if `create`)."""
    # pymilvus is an optional dependency, imported only when a command uses Milvus.
    from pddm_tf.vectordb.milvus import MilvusGallery

    gallery = MilvusGallery(FLAGS.milvus_uri, FLAGS.collection, FLAGS.milvus_token)
    return gallery.open(embedder.info, create=create, index_type=FLAGS.index_type,
                        index_params=json_object("index_params"))


def recall_at_k(query_labels: list[str], neighbour_labels: list[list[str]], top_k: int) -> dict[str, float]:
    """Recall@K for K = 1, 2, 4, ... <= top_k (and top_k): the fraction of labelled queries with a neighbour
    of their label among their K nearest (METHODS.md section 5); {} when no query has a label."""
    ks = sorted({k for k in (2 ** i for i in range(15)) if k <= top_k} | {top_k})
    pairs = [(q, n) for q, n in zip(query_labels, neighbour_labels) if q]
    if not pairs:
        return {}
    return {f"recall@{k}": sum(q in n[:k] for q, n in pairs) / len(pairs) for k in ks}
