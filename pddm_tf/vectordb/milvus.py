"""A gallery of embeddings in Milvus: Milvus Lite in a local file by default, a Milvus server or cluster by URI.

`MilvusGallery(uri, collection)` talks to either with the same code (pymilvus's `MilvusClient`):

* a path (e.g. `gallery.db`, the default of `pddm-tf index`): Milvus Lite, an embedded engine that keeps
  the collection in that file; nothing to start (`pip install "pddm-tf[milvus]"`).
* `http://host:19530` (or https): a Milvus standalone server or cluster, with `token` ("user:password" or
  an API key) when it requires authentication.

A collection holds one row per image: `id` (int64 primary key, `file_id` of the image's path relative to
the indexed folder, so re-indexing a folder rewrites, never duplicates), `vector` (float32 [d]), `label`
and `path`. The embedding model's identity (`ModelInfo`: name, version, dimension and the SavedModel's
checksum) is stored in the collection's properties when it is created; `open` refuses a model that is
not the one the collection was built with (`ModelMismatchError`), since distances between embeddings
of two models mean nothing. Distances are squared Euclidean (Milvus' "L2" metric), as in
`pddm_tf.evaluation.Index`.

Index types (`index_type`): "FLAT" (exact), "HNSW" (params M, efConstruction; search param ef),
"IVF_FLAT" (nlist; nprobe), "AUTOINDEX" (the server chooses); see Milvus' documentation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Index types `MilvusGallery.open` accepts, and their build parameters' defaults.
INDEX_TYPES: dict[str, dict[str, int]] = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200},
                                          "IVF_FLAT": {"nlist": 128}, "AUTOINDEX": {}}
#: Search parameters by index type (Milvus' names), defaults of `search`.
SEARCH_PARAMS: dict[str, dict[str, int]] = {"FLAT": {}, "HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16},
                                            "AUTOINDEX": {}}
#: The longest path and label stored (Milvus VARCHAR limits are declared per field).
MAX_PATH_CHARS = 4096
MAX_LABEL_CHARS = 512
_PROPERTY = "pddm_tf."  # prefix of the collection properties this module writes


class ModelMismatchError(ValueError):
    """The collection holds embeddings of another model (or dimension) than the one given."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The identity of an embedding model, stored with a collection.

    Attributes:
      name: e.g. the export's base folder name.
      version: e.g. the TF Serving version folder.
      dim: d, the embedding size.
      checksum: the SavedModel's fingerprint checksum ("" when unknown); when both sides have one, it
        decides whether two models are the same (a renamed copy of an export is still the same model).
    """

    name: str
    version: str
    dim: int
    checksum: str = ""

    def properties(self) -> dict[str, str]:
        return {f"{_PROPERTY}{key}": str(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> ModelInfo | None:
        values = {key[len(_PROPERTY):]: value for key, value in properties.items() if key.startswith(_PROPERTY)}
        if not {"name", "version", "dim"} <= set(values):
            return None
        return cls(str(values["name"]), str(values["version"]), int(values["dim"]), str(values.get("checksum", "")))

    def same_model(self, other: ModelInfo) -> bool:
        if self.dim != other.dim:
            return False
        if self.checksum and other.checksum:
            return self.checksum == other.checksum
        return (self.name, self.version) == (other.name, other.version)

    def describe(self) -> str:
        checksum = f", checksum {self.checksum}" if self.checksum else ""
        return f"{self.name} version {self.version} (d={self.dim}{checksum})"


def file_id(relative_path: str) -> int:
    """A row id for an image: the first 63 bits of BLAKE2b of its relative path (POSIX separators), so the
    same file always gets the same positive int64 id; two of a billion paths collide with odds ~1e-10."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _import_pymilvus() -> Any:
    try:
        import pymilvus  # optional dependency: only the vector-database commands need it
    except ImportError as error:
        raise ImportError('Milvus needs pymilvus and milvus-lite: pip install "pddm-tf[milvus]"') from error
    return pymilvus


class MilvusGallery:
    """One collection of a Milvus instance (Lite file or server URI) holding a gallery of one model.

    Args:
      uri: a local file path (Milvus Lite) or http(s)://host:port (a server or cluster).
      collection: the collection name.
      token: authentication for a server ("user:password" or an API key); None for none.
    """

    def __init__(self, uri: str, collection: str = "pddm_gallery", token: str | None = None) -> None:
        pymilvus = _import_pymilvus()
        if not uri:
            raise ValueError("a Milvus URI is needed: a local .db file (Milvus Lite) or http://host:19530")
        self.uri, self.collection = uri, collection
        try:
            self.client = pymilvus.MilvusClient(uri=uri, token=token or "")
        except Exception as error:  # pymilvus raises MilvusException, ConnectionError, ... for an unreachable URI
            raise ConnectionError(f"cannot reach Milvus at {uri}: {_first_line(error)}") from None
        self.model: ModelInfo | None = None
        self.index_type = "FLAT"

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def stored_model(self) -> ModelInfo | None:
        """The model the collection was built with (None for a collection that pddm_tf did not create)."""
        description = self.client.describe_collection(self.collection)
        return ModelInfo.from_properties(description.get("properties") or {})

    def open(self, model: ModelInfo, create: bool = False, index_type: str = "HNSW",
             index_params: Mapping[str, int] | None = None) -> MilvusGallery:
        """Checks (or, with `create` and no such collection, creates) the collection for `model`.

        Raises:
          ModelMismatchError: the collection was built with another model or dimension.
          ValueError: no such collection (without `create`), an unknown index type, or a collection
            that pddm_tf did not create.
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
        if not self.exists():
            if not create:
                raise ValueError(f"no collection {self.collection!r} at {self.uri}: run pddm-tf index first")
            self._create(model, index_type, {**INDEX_TYPES[index_type], **(index_params or {})})
        stored = self.stored_model()
        if stored is None:
            raise ValueError(f"collection {self.collection!r} at {self.uri} was not created by pddm-tf index "
                             "(it has no model properties)")
        if not stored.same_model(model):
            raise ModelMismatchError(f"collection {self.collection!r} holds embeddings of {stored.describe()}, not of "
                                     f"{model.describe()}: use the model it was built with, or another collection")
        self.model = stored
        self.client.load_collection(self.collection)  # a released collection answers no search or query
        described = self.client.describe_index(self.collection, "vector") or {}
        self.index_type = str(described.get("index_type", "FLAT"))
        return self

    def _create(self, model: ModelInfo, index_type: str, index_params: Mapping[str, int]) -> None:
        pymilvus = _import_pymilvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=model.dim)
        schema.add_field("label", pymilvus.DataType.VARCHAR, max_length=MAX_LABEL_CHARS)
        schema.add_field("path", pymilvus.DataType.VARCHAR, max_length=MAX_PATH_CHARS)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type=index_type, metric_type="L2", params=dict(index_params))
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      properties=model.properties())

    def present_ids(self, ids: Sequence[int], chunk: int = 1000) -> set[int]:
        """The ids among `ids` that the collection holds already."""
        found: set[int] = set()
        for start in range(0, len(ids), chunk):
            part = [int(i) for i in ids[start:start + chunk]]
            rows = self.client.query(self.collection, filter=f"id in {part}", output_fields=["id"],
                                     consistency_level=_READ_CONSISTENCY)
            found.update(int(row["id"]) for row in rows)
        return found

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, labels: Sequence[str], paths: Sequence[str]) -> None:
        """Writes rows (replacing rows with the same id), durably: flushed before it returns, so an
        interrupted `pddm-tf index` keeps every batch written so far."""
        vectors = np.asarray(vectors, np.float32)
        if self.model is not None and vectors.shape[1:] != (self.model.dim,):
            raise ValueError(f"vectors must be [n, {self.model.dim}], got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or inf values")
        for path in paths:
            if len(path) > MAX_PATH_CHARS:
                raise ValueError(f"path longer than {MAX_PATH_CHARS} characters: {path[:80]}...")
        rows = [{"id": int(i), "vector": v, "label": str(label)[:MAX_LABEL_CHARS], "path": str(path)}
                for i, v, label, path in zip(ids, vectors, labels, paths)]
        self.client.upsert(self.collection, rows)
        self.client.flush(self.collection)

    def count(self) -> int:
        """The number of rows."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"],
                                 consistency_level=_READ_CONSISTENCY)
        return int(rows[0]["count(*)"])

    def search(self, vectors: np.ndarray, k: int, search_params: Mapping[str, int] | None = None
               ) -> list[list[dict[str, Any]]]:
        """The k nearest rows of each query vector [n, d]: per query, dicts of id, distance (squared
        Euclidean), label and path, nearest first."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or (self.model is not None and vectors.shape[1] != self.model.dim):
            raise ValueError(f"queries must be [n, {self.model.dim if self.model else 'd'}], got {vectors.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        params = {**SEARCH_PARAMS.get(self.index_type, {}), **(search_params or {})}
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), int(k))  # HNSW's ef must be at least k
        hits = self.client.search(self.collection, data=list(vectors), limit=int(k),
                                  output_fields=["label", "path"], search_params={"metric_type": "L2",
                                                                                  "params": params})
        return [[{"id": int(hit["id"]), "distance": float(hit["distance"]), "label": hit["entity"]["label"],
                  "path": hit["entity"]["path"]} for hit in row] for row in hits]

    @property
    def is_local(self) -> bool:
        """Whether the URI is a Milvus Lite file (not a server)."""
        return "://" not in self.uri

    def close(self) -> None:
        """Closes the connection; for Milvus Lite also stops its in-process server, which holds a lock on the
        file until then (else only this process could open the file until it exits)."""
        self.client.close()
        if self.is_local:
            try:
                from milvus_lite.server_manager import server_manager_instance  # optional, with pymilvus
            except ImportError:
                return
            server_manager_instance.release_server(self.uri)



#: Reads that decide what `pddm-tf index` skips must see every write before them; at the collection's
#: default consistency ("Bounded") a read need not, and a resumed run once reported 16 rows present in a
#: file where a count had just found 20 (CI, 2026-12-07; the rerun's upserts left no duplicate).
_READ_CONSISTENCY = "Strong"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
