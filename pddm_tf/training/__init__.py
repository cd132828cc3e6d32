"""Training as a function of a value: `train(TrainConfig(...))`, what `pddm-tf train` runs.

    from pddm_tf.training import TrainConfig, train
    metrics = train(TrainConfig(method="triplet_batchhard", epochs=5, export_dir="/tmp/model"))

Recipes are `TrainConfig`s too: `pddm_tf.recipes.get_recipe("omniglot").config(epochs=3)`.
Importing this package does not import TensorFlow; running `train` does.
"""

from pddm_tf.training.config import TrainConfig
from pddm_tf.training.run import Trained, build_model, fit, load_split, train

__all__ = ["TrainConfig", "Trained", "build_model", "fit", "load_split", "train"]
