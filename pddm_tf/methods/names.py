"""The names of the training methods, importable without TensorFlow.

`pddm-tf --help` lists them (the choices of `--method`) and must not import TensorFlow;
`pddm_tf.methods.METHODS` maps each name to its builder and is checked against this tuple.
"""

METHOD_NAMES: tuple[str, ...] = (
    "pddm_quadruplet",
    "pddm_triplet",
    "euclidean_quadruplet",
    "contrastive",
    "triplet_semihard",
    "triplet_batchhard",
    "lifted_structured",
    "npair",
    "margin",
    "multi_similarity",
    "hdml_npair",
    "hdml_triplet",
    "hdml_pddm",
    "dc_margin",
    "dc_pddm",
)
