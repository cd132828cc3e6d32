"""Judging embeddings of held-out classes: exact search, retrieval metrics, few-shot episodes.

* `search`: `nearest_neighbors`, exact and in bounded memory, with pluggable backends
  (`SEARCH_BACKENDS`: "numpy", the default, "tf" and "faiss").
* `retrieval`: Recall@K, MAP@R, R-Precision and NMI (METHODS.md section 5), from one search.
* `few_shot`: N-way K-shot episodes classified by the nearest prototype (METHODS.md section 6).
* `index`: `Index`, a saved, searchable set of labelled embeddings, searched exactly or approximately
  (`ann`: HNSW and IVF-PQ through faiss).
* `callbacks`: embedding a dataset with a model, and `RetrievalEvaluation` during `fit`.
* `visualize`: pictures of a result (matplotlib, optional).
"""

from pddm_tf.evaluation.callbacks import RetrievalEvaluation, embed_dataset
from pddm_tf.evaluation.few_shot import FewShotResult, evaluate_few_shot, few_shot_accuracy
from pddm_tf.evaluation.index import Index, Lookup
from pddm_tf.evaluation.retrieval import (
    DEFAULT_KS,
    KMEANS_N_INIT,
    MAX_PAIR_SIMILARITY_ITEMS,
    PairScores,
    distribution_overlap,
    evaluate_retrieval,
    format_table,
    map_at_r,
    nmi,
    pair_similarities,
    recall_at_k,
    rerank_shortlist,
)
from pddm_tf.evaluation.search import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_GALLERY_CHUNK_SIZES,
    SEARCH_BACKENDS,
    SearchBackend,
    check_backend,
    exact_top_k,
    nearest_neighbors,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_GALLERY_CHUNK_SIZES",
    "DEFAULT_KS",
    "KMEANS_N_INIT",
    "MAX_PAIR_SIMILARITY_ITEMS",
    "SEARCH_BACKENDS",
    "FewShotResult",
    "Index",
    "Lookup",
    "PairScores",
    "RetrievalEvaluation",
    "SearchBackend",
    "check_backend",
    "distribution_overlap",
    "embed_dataset",
    "evaluate_few_shot",
    "evaluate_retrieval",
    "exact_top_k",
    "few_shot_accuracy",
    "format_table",
    "map_at_r",
    "nearest_neighbors",
    "nmi",
    "pair_similarities",
    "recall_at_k",
    "rerank_shortlist",
]
