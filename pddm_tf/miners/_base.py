"""What every miner shares: the one index-tuple type it returns, the `Miner` base and its registry."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import keras
import tensorflow as tf

from pddm_tf.distances import pairwise_distances
from pddm_tf.miners.mining import check_labels
from pddm_tf.registry import check_registered


class Tuples(NamedTuple):
    """Index tuples (anchor, positive, negative) of a batch, the one type every `Miner` returns.

    Row r is the tuple (anchors[r], positives[r], negatives[r]): labels[anchors[r]] ==
    labels[positives[r]] and, for every miner but N-pair, labels[negatives[r]] differs. How rows
    group depends on the miner and is what `groups` counts:

    * triplet miners (semi-hard, batch-hard, distance-weighted, closest-beyond-cutoff): every row is
      one triplet, groups = t;
    * `QuadrupletMiner`: t = 2q rows, row r < q is (i, j, k) for the quadruplet (i, j, k, l) of a
      positive pair i < j, and row q + r is (j, i, l), the same pair seen from j; groups = q;
    * `NPairMiner`: t = N^2 rows, anchor-major, row i N + j is (a_i, p_i, p_j), the j-th candidate
      of anchor i (the positive itself at j = i); groups = N.

    Attributes:
      anchors, positives, negatives: [t] int32 batch indices, t >= 0 (0: the batch has no tuple).
      groups: scalar int32, see above.
    """

    anchors: tf.Tensor
    positives: tf.Tensor
    negatives: tf.Tensor
    groups: tf.Tensor

    @classmethod
    def from_rows(cls, rows: tf.Tensor, groups: tf.Tensor | None = None) -> Tuples:
        """Tuples from [t, 3] int32 rows (anchor, positive, negative); groups defaults to t."""
        rows = tf.convert_to_tensor(rows, tf.int32)
        anchors, positives, negatives = tf.unstack(rows, num=3, axis=1)
        return cls(anchors, positives, negatives, tf.shape(rows)[0] if groups is None else groups)

    @property
    def count(self) -> tf.Tensor:
        """t, the number of rows."""
        return tf.shape(self.anchors)[0]

    def rows(self) -> tf.Tensor:
        """The tuples as [t, 3] int32 (anchor, positive, negative)."""
        return tf.stack([self.anchors, self.positives, self.negatives], axis=1)


#: Name -> `Miner` subclass; a subclass that sets its own `name` registers itself here.
MINERS: dict[str, type[Miner]] = {}


class Miner:
    """Chooses index tuples in a batch from its labels and pairwise distances; never differentiated.

    `miner(labels [m], embeddings [m, d], distances=None) -> Tuples`. The distances [m, m] are those
    the loss computes anyway (smaller = more similar, any `pddm_tf.distances.Distance` or negated
    similarity scores); without them the miner uses Euclidean distances of the stopped embeddings.
    Subclasses set `name`, implement `mine` and, if they take arguments, `get_config`; defining
    one registers it in `MINERS`, so that a loss's config can name it (`get_miner`).
    """

    name: ClassVar[str] = ""
    #: Whether XLA can compile `mine` (Keras' `supports_jit`, read by the models that train with the
    #: miner): False for a miner whose number of tuples depends on the data, or whose draws use an op
    #: XLA cannot compile.
    supports_jit: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            if cls.name in MINERS and MINERS[cls.name] is not cls:
                raise ValueError(f"a miner named {cls.name!r} is already registered ({MINERS[cls.name]})")
            MINERS[cls.name] = cls

    def __call__(self, labels: tf.Tensor, embeddings: tf.Tensor, distances: tf.Tensor | None = None) -> Tuples:
        labels = check_labels(labels)
        embeddings = tf.stop_gradient(tf.convert_to_tensor(embeddings))
        if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
            raise ValueError(f"embeddings must have shape [batch, dim], got shape {embeddings.shape}")
        distances = pairwise_distances(embeddings) if distances is None else tf.stop_gradient(distances)
        return self.mine(labels, distances, tf.shape(embeddings)[1])

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor) -> Tuples:
        """The tuples of a batch: labels [m] int32, distances [m, m] (stopped), embedding_dim d."""
        raise NotImplementedError

    @property
    def variables(self) -> list[keras.Variable]:
        """State to save with the model that trains with this miner (a seeded sampler's position)."""
        return []

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments: `type(self)(**self.get_config())` is an equal miner."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Miner:
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.get_config() == self.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))


def serialize_miner(miner: Miner) -> dict[str, Any]:
    """{"name": registered name, "config": constructor arguments}, as a loss's config holds it."""
    return {"name": get_miner(miner).name, "config": miner.get_config()}


def get_miner(identifier: str | dict[str, Any] | Miner) -> Miner:
    """A `Miner` from its registered name (default arguments), `serialize_miner`'s dict, or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or a Miner whose class has no name.
    """
    if isinstance(identifier, Miner):
        check_registered(identifier, MINERS)
        return identifier
    name, config = (identifier, {}) if isinstance(identifier, str) else (identifier.get("name"),
                                                                          identifier.get("config", {}))
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}; expected one of {sorted(MINERS)} or a Miner")
    return MINERS[name].from_config(config)
