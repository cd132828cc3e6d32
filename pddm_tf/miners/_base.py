"""What every miner shares: the one index-tuple type it returns, the `Miner` base and its registry."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import keras
import tensorflow as tf

from pddm_tf._named import Named, get_named, serialize_named
from pddm_tf.distances import pairwise_distances
from pddm_tf.miners.mining import check_labels


class Tuples(NamedTuple):
    """Mined index tuples of a batch: the one type every `Miner` returns and every loss's
    `from_indices` takes. Two forms, one type:

    * triplet form (`negative_anchors` None): row r is the triplet (anchors[r], positives[r],
      negatives[r]), labels[anchors[r]] == ref_labels[positives[r]] and, for every miner but
      N-pair, ref_labels[negatives[r]] differs;
    * pair form (`Tuples.from_pairs(a1, p, a2, n)`): positive pairs (anchors[r], positives[r]), [t]
      each, and negative pairs (negative_anchors[s], negatives[s]), [u] each, t and u independent
      (pytorch-metric-learning's (a1, p, a2, n)).

    `pairs()` reads either form as (a1, p, a2, n) (a triplet names the pairs (a, p) and (a, n));
    `to_triplets()` turns the pair form into every triplet (a, p, n) whose two pairs share the
    anchor. Anchors index the batch's embeddings [m, d]; positives and negatives index the
    reference embeddings [n, d] (the batch itself unless a loss is given `ref_embeddings`).

    How triplet rows group depends on the miner and is what `groups` counts:
    * triplet miners (semi-hard, batch-hard, distance-weighted, closest-beyond-cutoff): every row is
      one triplet, groups = t;
    * `QuadrupletMiner`: t = 2q rows, row r < q is (i, j, k) for the quadruplet (i, j, k, l) of a
      positive pair i < j, and row q + r is (j, i, l), the same pair seen from j; groups = q.
      `as_quadruplets()` is the named view [q, 4] (i, j, k, l), `from_quadruplets` the converse;
    * `NPairMiner`: t = N^2 rows, anchor-major, row i N + j is (a_i, p_i, p_j), the j-th candidate
      of anchor i (the positive itself at j = i); groups = N;
    * pair form: groups = t, the number of positive pairs.

    Attributes:
      anchors, positives, negatives: [t] int32 indices, t >= 0 (0: the batch has no tuple); in
        the pair form negatives is [u].
      groups: scalar int32, see above.
      negative_anchors: None (triplet form) or [u] int32, the anchors of the negative pairs.
    """

    anchors: tf.Tensor
    positives: tf.Tensor
    negatives: tf.Tensor
    groups: tf.Tensor
    negative_anchors: tf.Tensor | None = None

    @classmethod
    def from_rows(cls, rows: tf.Tensor, groups: tf.Tensor | None = None) -> Tuples:
        """Tuples from [t, 3] int32 rows (anchor, positive, negative); groups defaults to t."""
        rows = tf.convert_to_tensor(rows, tf.int32)
        anchors, positives, negatives = tf.unstack(rows, num=3, axis=1)
        return cls(anchors, positives, negatives, tf.shape(rows)[0] if groups is None else groups)

    @classmethod
    def from_triplets(cls, anchors: tf.Tensor, positives: tf.Tensor, negatives: tf.Tensor) -> Tuples:
        """Triplet form from three [t] index vectors; groups = t."""
        anchors = tf.convert_to_tensor(anchors, tf.int32)
        return cls(anchors, tf.convert_to_tensor(positives, tf.int32), tf.convert_to_tensor(negatives, tf.int32),
                   tf.shape(anchors)[0])

    @classmethod
    def from_pairs(cls, a1: tf.Tensor, p: tf.Tensor, a2: tf.Tensor, n: tf.Tensor) -> Tuples:
        """Pair form: positive pairs (a1[r], p[r]) [t] and negative pairs (a2[s], n[s]) [u]; groups = t."""
        a1 = tf.convert_to_tensor(a1, tf.int32)
        return cls(a1, tf.convert_to_tensor(p, tf.int32), tf.convert_to_tensor(n, tf.int32), tf.shape(a1)[0],
                   tf.convert_to_tensor(a2, tf.int32))

    @classmethod
    def from_quadruplets(cls, quadruplets: Any) -> Tuples:
        """The triplet layout of quadruplets (i, j, k, l) [q, 4] (or `Quadruplets`): rows (i, j, k) then
        (j, i, l); groups = q."""
        indices = tf.convert_to_tensor(getattr(quadruplets, "indices", quadruplets), tf.int32)
        i, j, k, l = tf.unstack(indices, num=4, axis=1)
        return cls(tf.concat([i, j], 0), tf.concat([j, i], 0), tf.concat([k, l], 0), tf.shape(i)[0])

    @property
    def is_pairs(self) -> bool:
        """Whether this is the pair form (a Python bool, known while tracing)."""
        return self.negative_anchors is not None

    @property
    def count(self) -> tf.Tensor:
        """t, the number of rows (of positive pairs in the pair form)."""
        return tf.shape(self.anchors)[0]

    def rows(self) -> tf.Tensor:
        """The triplets as [t, 3] int32 (anchor, positive, negative)."""
        self._require_triplets("rows")
        return tf.stack([self.anchors, self.positives, self.negatives], axis=1)

    def pairs(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(a1, p, a2, n): the positive pairs (a1, p) and negative pairs (a2, n) these tuples name."""
        a2 = self.anchors if self.negative_anchors is None else self.negative_anchors
        return self.anchors, self.positives, a2, self.negatives

    def to_triplets(self) -> Tuples:
        """Triplet form: itself, or for the pair form every (a, p, n) with (a, p) a positive pair and
        (a, n) a negative pair (row-major over positive pairs, then negative pairs); groups = t."""
        if self.negative_anchors is None:
            return self
        rows = tf.cast(tf.where(tf.equal(self.anchors[:, None], self.negative_anchors[None, :])), tf.int32)
        return Tuples.from_triplets(tf.gather(self.anchors, rows[:, 0]), tf.gather(self.positives, rows[:, 0]),
                                    tf.gather(self.negatives, rows[:, 1]))

    def as_quadruplets(self) -> tf.Tensor:
        """The named view of `QuadrupletMiner`'s layout: [q, 4] int32 (i, j, k, l), q = groups."""
        self._require_triplets("as_quadruplets")
        q = self.groups
        return tf.stack([self.anchors[:q], self.positives[:q], self.negatives[:q], self.negatives[q:]], axis=1)

    def _require_triplets(self, method: str) -> None:
        if self.negative_anchors is not None:
            raise ValueError(f"Tuples.{method} needs the triplet form; these are pairs (call to_triplets() first)")


#: Name -> `Miner` subclass; a subclass that sets its own `name` registers itself here.
MINERS: dict[str, type[Miner]] = {}


class Miner(Named, table=MINERS, kind="miner"):
    """Chooses index tuples in a batch from its labels and pairwise distances; never differentiated.

    `miner(labels [m], embeddings [m, d], distances=None, ref_embeddings=None, ref_labels=None)
    -> Tuples`. The distances [m, n] are those the loss computes anyway, as a dissimilarity
    (smaller = more similar: a distance, or `Distance.to_dissimilarity` of a similarity); without
    them the miner uses Euclidean distances of the stopped embeddings. With `ref_embeddings` [n, d]
    and `ref_labels` [n] (e.g. a memory of past batches) anchors come from the batch and positives
    and negatives from the reference set, every same-label reference row being a positive.

    Subclasses set `name`, implement `mine` and, if they take arguments, `get_config`; defining
    one registers it in `MINERS`, so that a loss's config can name it (`get_miner`). A miner that
    can only mine within one batch sets `supports_ref = False`.
    """

    #: Whether XLA can compile `mine` (Keras' `supports_jit`, read by the models that train with the
    #: miner): False for a miner whose number of tuples depends on the data, or whose draws use an op
    #: XLA cannot compile.
    supports_jit: ClassVar[bool] = True
    #: Whether `mine` handles reference samples (`ref_labels` not None).
    supports_ref: ClassVar[bool] = True

    def __call__(self, labels: tf.Tensor, embeddings: tf.Tensor, distances: tf.Tensor | None = None,
                 ref_embeddings: tf.Tensor | None = None, ref_labels: tf.Tensor | None = None) -> Tuples:
        labels = check_labels(labels)
        embeddings = tf.stop_gradient(tf.convert_to_tensor(embeddings))
        if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
            raise ValueError(f"embeddings must have shape [batch, dim], got shape {embeddings.shape}")
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels go together: pass both or neither")
        if ref_labels is not None:
            if not self.supports_ref:
                raise ValueError(f"{type(self).__name__} mines within one batch: it does not take ref_embeddings")
            ref_labels = check_labels(ref_labels)
            ref_embeddings = tf.stop_gradient(tf.convert_to_tensor(ref_embeddings))
        if distances is None:
            distances = pairwise_distances(embeddings, ref_embeddings)
        distances, dim = tf.stop_gradient(distances), tf.shape(embeddings)[1]
        # Three arguments without a reference set: miners written before `ref_labels` still work.
        return self.mine(labels, distances, dim) if ref_labels is None else self.mine(labels, distances, dim,
                                                                                      ref_labels)

    def mine(self, labels: tf.Tensor, distances: tf.Tensor, embedding_dim: tf.Tensor,
             ref_labels: tf.Tensor | None = None) -> Tuples:
        """The tuples of a batch: labels [m] int32, distances [m, n] (stopped dissimilarities),
        embedding_dim d, ref_labels [n] int32 of the reference samples or None (then n = m and the
        reference is the batch itself: exclude self pairs, e.g. with `mining.pair_masks`)."""
        raise NotImplementedError

    @property
    def variables(self) -> list[keras.Variable]:
        """State to save with the model that trains with this miner (a seeded sampler's position)."""
        return []



def serialize_miner(miner: Miner) -> dict[str, Any]:
    """{"name": registered name, "config": constructor arguments}, as a loss's config holds it."""
    return serialize_named(miner, Miner)


def get_miner(identifier: str | dict[str, Any] | Miner) -> Miner:
    """A `Miner` from its registered name (default arguments), `serialize_miner`'s dict, or itself.

    Raises:
      ValueError: an unknown name, listing the known ones, or a Miner whose class has no name.
    """
    return get_named(identifier, Miner)
