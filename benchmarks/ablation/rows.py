"""Rows of the with/without comparisons of HDML, Divide-and-Conquer and the PDDM paper's choices,
as a `benchmarks/few_shot.py --variants` JSON object for one seed (issues 13 item 5, 14 item 7).

  python benchmarks/ablation/rows.py SEED [GROUP]     # GROUP: methods (default), pddm_claims or hdml_twins

Every row is `pddm-tf train`'s defaults with PDDM quadruplets (few_shot.py's `pddm_defaults`; the
default method is margin since issue 32) and one change, so a row and its base differ only in
that change; `BASES` names each row's base for `benchmarks/ablation/table.py`. The optimiser is
pinned to Adam at a constant 1e-3 (the defaults' optimiser when BENCHMARKS.md sections 2-4 were
measured; the defaults have a warm-up and a cosine decay since).

What the rows measure (issue 31): the methods as they are now, i.e. PDDM with raw inputs and the
Euclidean prior (`layers.PDDM`), HDML's N-pair on unnormalised embeddings with the authors'
regulariser, the triplet J_soft with the positives' term. Sections 2-4 of BENCHMARKS.md were
measured before these changes: their base "pddm" row had normalised PDDM inputs (the default
then; their "pddm_raw_inputs" row was the change), no unit had the prior, and HDML's N-pair ran on
unit-norm embeddings. These rows do not reproduce those figures, and the sections' claims hold
only for what they measured. The normalised-input reading is now the row "pddm_normalized_inputs".
"""

from __future__ import annotations

import json
import sys

_METHODS = {
    "npair": {"method": "npair"},
    "hdml_npair": {"method": "hdml_npair"},
    "hdml_npair_a90": {"method": "hdml_npair", "hdml_alpha": 90.0},
    "hdml_npair_pairgen": {"method": "hdml_npair", "hdml_generator_input": "anchor_pair"},
    "triplet_bh": {"method": "triplet_batchhard"},
    "hdml_triplet": {"method": "hdml_triplet"},
    "hdml_triplet_a90": {"method": "hdml_triplet", "hdml_alpha": 90.0},
    "pddm": {},
    "hdml_pddm": {"method": "hdml_pddm"},
    "hdml_pddm_a90": {"method": "hdml_pddm", "hdml_alpha": 90.0},
    **{f"{method}_k{k}": {"method": method, "num_learners": k}
       for method in ("dc_margin", "dc_pddm") for k in (1, 2, 4)},
}
_PDDM_CLAIMS = {
    "pddm_triplet": {"method": "pddm_triplet"},
    "euclidean_quadruplet": {"method": "euclidean_quadruplet"},
    # The recalled normalised-input reading, against the raw-input default (the base).
    "pddm_normalized_inputs": {"pddm_normalize_inputs": True},
    "multi_similarity": {"method": "multi_similarity"},  # "PDDM beats the standard losses"
}
# HDML's exact "without" twins: its base loss on its own rows and random negatives, no synthetics.
_HDML_TWINS = {f"hdml_{base}_base": {"method": f"hdml_{base}", "hdml_synthetic": False}
               for base in ("npair", "triplet", "pddm")}
GROUPS: dict[str, dict[str, dict]] = {"methods": _METHODS, "pddm_claims": _PDDM_CLAIMS, "hdml_twins": _HDML_TWINS}

#: Row -> the row it is compared with (the same loss without the method, or K = 1). HDML rows are
#: compared with their exact twin without synthetic negatives; the twins with the library's loss.
BASES = {
    **{f"hdml_{base}{variant}": f"hdml_{base}_base" for base in ("npair", "triplet", "pddm")
       for variant in ("", "_a90", "_pairgen")},
    "hdml_npair_base": "npair", "hdml_triplet_base": "triplet_bh", "hdml_pddm_base": "pddm",
    "dc_margin_k2": "dc_margin_k1", "dc_margin_k4": "dc_margin_k1",
    "dc_pddm_k2": "dc_pddm_k1", "dc_pddm_k4": "dc_pddm_k1",
    "pddm_triplet": "pddm", "euclidean_quadruplet": "pddm", "pddm_normalized_inputs": "pddm",
    "multi_similarity": "pddm",
    "pddm_raw_inputs": "pddm",  # in the results measured before issue 31 (raw inputs were the change)
    # The same claims at the recipe's settings (few_shot.py's rows; pddm_norm_recipe is a --variants row).
    **{row: "pddm_recipe" for row in ("euclidean_recipe", "pddm_triplet_recipe", "pddm_norm_recipe", "recipe")},
}


#: The defaults' optimiser when these comparisons were measured.
OPTIMISER = {"learning_rate": 1e-3, "weight_decay": 0.0, "lr_schedule": "constant", "warmup_fraction": 0.0}


def variants(seed: int, group: str = "methods") -> dict[str, dict]:
    """Row name -> few_shot.py variant (base row "pddm_defaults" with `OPTIMISER`, the seed, the row's change)."""
    return {name: {"base": "pddm_defaults", "seed": seed, **OPTIMISER, **change}
            for name, change in GROUPS[group].items()}


if __name__ == "__main__":
    print(json.dumps(variants(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "methods")))
