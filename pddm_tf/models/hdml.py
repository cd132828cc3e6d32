"""Hardness-Aware Deep Metric Learning (Zheng, Chen, Lu & Zhou, CVPR 2019; METHODS.md section 3).

HDML recycles easy negatives: each negative embedding is pulled toward its anchor to a hardness
set by how well training goes (`hardness_aware_negatives`), a generator decodes it back to
feature space while a frozen softmax classifier keeps its label, and the re-embedded synthetic
negatives train the metric alongside the real ones (`HDMLModel`). The interpolation, the authors'
N-pair loss and the derivation of the default constants are in `pddm_tf.models.hdml_ops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from pddm_tf.distances import EPSILON
from pddm_tf.layers import PDDM
from pddm_tf.losses import DoubleHeaderHingeLoss, TripletLoss, check_embeddings
from pddm_tf.models.base import EmbeddingModel, gather_global_batch
from pddm_tf.models.hdml_config import (
    GROUPS,
    MOVED,
    HardnessSchedule,
    SynthesisConfig,
    deprecated_setting,
    take_flat_settings,
)
from pddm_tf.models.hdml_ops import (
    GENERATOR_INPUTS,
    HDML_BASES,
    NPAIR_REG,
    adam,
    hardness_aware_negatives,
    mean,
    mean_cross_entropy,
)
from pddm_tf.models.hdml_rows import HDMLBookkeeping

__all__ = ["GENERATOR_INPUTS", "HDML_BASES", "HDMLModel", "HardnessSchedule", "SynthesisConfig",
           "hardness_aware_negatives"]


@keras.saving.register_keras_serializable(package="pddm_tf")
class HDMLModel(HDMLBookkeeping, EmbeddingModel):
    """HDML around a base metric loss, with its generator and label-preserving classifier.

    Per step, on the global batch (features y [m, k] from the backbone, z = the head's projection of
    y [m, d]: unnormalised for "npair" by default, as in the original, L2-normalised otherwise; see
    `normalize_embeddings`):

      1. rows (a, p, n) of the batch (`pddm_tf.miners.Tuples`): for "npair" the N-pair pairing of `NPairLoss`
         (first two images of each class) with every class's positive as a candidate (its own
         is the target; d+ = d- leaves it unchanged), as in the original's tiled N-pair; for
         "triplet"/"pddm" every positive pair in both directions with a random negative of the
         anchor (stateless draw keyed on the step, so all replicas agree). Random, not hardest,
         negatives: HDML's point is to make easy negatives useful.
      2. z^- = `hardness_aware_negatives`(z_a, z_p, z_n, J_avg, alpha).
      3. generator G: Dense(512) -> ReLU -> BN -> Dense(k), linear. With `synthesis.generator_input`
         "single" (default, the original's), G takes single embeddings: the real z [m] and the
         synthetic z^- [t] stacked along the batch, so y' = G(z) reconstructs each sample and
         G(z^-) decodes each synthetic negative. With "anchor_pair" (this library's first reading
         of METHODS.md section 3), G takes [anchor; sample] pairs: [z; z] for the real samples and
         [z_a; z^-] for the synthetic ones. Both go through the same head: z~ = head(G(.)).
         (z^- lies on the chord [z_a, z_n]: with unit-norm embeddings it is inside the unit ball,
         not on the sphere; G takes it as it is.)
      4. J_m(real) on (z_a, z_p, z_n) and J_m(syn) on (z~_a, z~_p, z~^-), z~_a and z~_p the
         re-embedded reconstructions of the anchor and positive, and
           J_metric = w J_m(real) + (1 - w) J_m(syn),  w = exp(-beta / J_gen_avg).
      5. J_recon = (1 - lambda) sum_{i, c} (y'_ic - y_ic)^2 (summed over the batch, as the
         original), J_soft = lambda * softmax_scale * CE terms, as the authors' code: for "npair"
         [mean CE(W G(z^-), y_n) + mean CE(W y'_a, y_a)] (synthetic negatives and reconstructed
         anchors); for "triplet" and "pddm" one mean CE over the rows' reconstructed anchors,
         reconstructed positives and synthetic negatives together, [W y'_a; W y'_p; W G(z^-)]
         against [y_a; y_p; y_n]. J_gen = J_recon + J_soft.
      6. classifier_loss = mean CE(W y, labels) on the real features.

    Three parameter groups, each updated only by its own loss with its own optimiser: the metric
    network (backbone, head [, PDDM]) by J_metric with the compiled optimizer (paper: Adam 7e-5);
    the generator by J_gen (`generator_optimizer`, Adam 1e-2); the classifier by classifier_loss
    (`classifier_optimizer`, Adam 1e-3), so W is frozen inside J_soft. J_m(syn) does reach the
    metric network, through the head applied to G's output and through G's input z, z^- (the
    generator weights themselves are not updated by it).

    Running means, as the original's: J_avg is the mean of the *weighted* real metric loss
    w J_m(real) over blocks of `hardness.window` (64) steps, and J_gen_avg that of J_gen; each is
    replaced when a block completes and holds `hardness.initial_running_mean` until the first one
    does (so the first block's synthetics are easy and J_metric is nearly J_m(real)). The block sums, the step within
    the block and the means are non-trainable weights, saved with the model.

    Constants (`HardnessSchedule`): `alpha=None` (default) calibrates alpha at the end of the first
    block so that the hardness factor exp(-alpha / J_avg) is `initial_easiness` then, and falls as
    J_avg falls; beta and `SynthesisConfig`'s softmax_scale keep the original values, whose ratio is
    what matters. The derivation is in `hdml_ops`' docstring; alpha = 90 gives the original's
    constant (with unit-norm embeddings, all synthetics as hard as the positive after 64 steps).

    N-pair base (the default): as the authors' code, on the unnormalised projection z, with
    TensorFlow's npairs_loss formula and its L2 regulariser on the embeddings (`npair_reg`, 0.002;
    `hdml_ops.npairs_loss`). On unit-norm embeddings without a temperature the N-pair logits are
    cosines in [-1, 1], the loss cannot fall below about log N - 1 and saturates; that reading
    stays available with `normalize_embeddings=True`. The model's output (`predict`, evaluation,
    export) is the L2-normalised embedding whatever the training reading, as for every method of
    the library. Differences from the original code: the "triplet" and "pddm" bases train on
    unit-norm embeddings (their margins are set for unit vectors); "pddm" (PDDM double-header hinge
    on real and synthetic quadruplets) is new. Weight decay: the original adds an L2 term (5e-3
    Cars, 1e-3 CUB, times sum w^2 / 2) on the metric network's non-BN weights only; here it is the
    compiled optimiser's (`pddm_tf.training.make_optimizer(..., weight_decay_mode="l2")` gives the
    same coupled term on kernels), which covers the metric network only, and the generator and
    classifier get none unless `SynthesisConfig`'s `generator_weight_decay` / `classifier_weight_decay`
    are set, as in the original.

    Logged: loss (J_metric), metric_loss_real, metric_loss_synthetic, j_recon, j_soft, j_gen,
    j_gen_avg and j_avg (the means used in this step), alpha (in use), easiness (exp(-alpha /
    J_avg)), lambda0 (mean over the rows), classifier_loss, synthetic_accuracy (classifier accuracy
    on synthetic negatives w.r.t. their source class). `evaluate` logs the real metric loss only;
    `predict` returns embeddings.

    Args:
      backbone, embedding_dim, dropout: see `EmbeddingModel`.
      num_classes: number of training classes (labels must be in [0, num_classes)).
      base: "npair", "triplet" or "pddm".
      hardness: a `HardnessSchedule`: alpha, initial_easiness, beta, and the running means' window
        and initial value (default: `HardnessSchedule()`).
      synthesis: a `SynthesisConfig`: the generator's input and width, soft_weight and softmax_scale
        of J_gen, and the learning rates and weight decays of the generator's and the classifier's
        optimisers, which the model creates itself (attributes `generator_optimizer`,
        `classifier_optimizer`, saved with the model) so `compile(optimizer=...)` is enough; a saved
        model's config only records these settings (default: `SynthesisConfig()`).
        The previous release's flat keywords (`alpha=90.0`, `generator_units=256`, ...) still work,
        with a DeprecationWarning naming the new spelling; so do the attributes (`model.beta` is
        `model.hardness.beta`).
      triplet_margin: hinge margin of the "triplet" base, on distances of unit vectors.
      normalize_embeddings: train on L2-normalised embeddings; None (default) = False for "npair"
        (the original) and True for "triplet" and "pddm".
      npair_reg: weight of the N-pair loss's L2 regulariser on the embeddings (the original's 0.002).
      pddm, pddm_loss: PDDM layer and `DoubleHeaderHingeLoss` of the "pddm" base (defaults: `PDDM()`,
        `DoubleHeaderHingeLoss()`; the loss's `mining` is unused, rows come from step 1).
      seed: seed of the random negatives of "triplet"/"pddm".
      synthetic: False trains the metric network on J_m(real) alone (J_metric = J_m(real)): the base
        loss with HDML's rows, the same random negatives and the same per-step cost, i.e. the exact
        "without HDML" twin of a run, for ablations. Everything else (generator, classifier,
        running means, logs) runs as usual; the synthetic negatives just do not reach the loss.
    """

    metric_names = ("loss", "metric_loss_real", "metric_loss_synthetic", "j_recon", "j_soft", "j_gen",
                    "j_gen_avg", "j_avg", "alpha", "easiness", "lambda0", "classifier_loss", "synthetic_accuracy")
    supports_loss_scaling = False  # three optimizers per step (mixed_bfloat16 works)
    loss_arguments = "base, triplet_margin, pddm_loss"

    def __init__(self, backbone: keras.Model, embedding_dim: int = 64, *, num_classes: int, base: str = "npair",
                 hardness: HardnessSchedule | None = None, synthesis: SynthesisConfig | None = None,
                 triplet_margin: float = 0.2, normalize_embeddings: bool | None = None, npair_reg: float = NPAIR_REG,
                 pddm: PDDM | None = None, pddm_loss: DoubleHeaderHingeLoss | None = None, seed: int = 0,
                 synthetic: bool = True, dropout: float = 0.0, **kwargs: Any) -> None:
        # Before Keras sees **kwargs: they may hold the previous release's flat settings.
        groups = take_flat_settings({"hardness": hardness, "synthesis": synthesis}, kwargs)
        super().__init__(backbone, embedding_dim=embedding_dim, dropout=dropout, **kwargs)
        if base not in HDML_BASES:
            raise ValueError(f"unknown HDML base {base!r}; expected one of {HDML_BASES}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if npair_reg < 0:
            raise ValueError(f"npair_reg must be non-negative, got {npair_reg}")
        self.num_classes = int(num_classes)
        self.base = base
        self.hardness: HardnessSchedule = groups["hardness"]
        self.synthesis: SynthesisConfig = groups["synthesis"]
        self.triplet_margin = float(triplet_margin)
        self.npair_reg = float(npair_reg)
        self.normalize_embeddings = base != "npair" if normalize_embeddings is None else bool(normalize_embeddings)
        self._triplet_loss = TripletLoss(margin=self.triplet_margin)
        self.seed = int(seed)
        self.synthetic = bool(synthetic)
        # No XLA (Keras' switch, see MetricLossModel): the triplet and PDDM bases draw negatives with
        # tf.random.stateless_categorical (no XLA CPU kernel) and keep a data-dependent number of rows,
        # and with the N-pair base the compiled step's first J_gen differs from the uncompiled one by
        # 0.6% on the same weights and batch (tests/test_jit_compile.py), far beyond float rounding:
        # not explained, so not offered.
        self.supports_jit = False
        uses_pddm = base == "pddm"
        if uses_pddm:
            pddm = pddm if pddm is not None else PDDM(name="pddm")
            pddm_loss = pddm_loss if pddm_loss is not None else DoubleHeaderHingeLoss()
        self.pddm = pddm if uses_pddm else None
        self.pddm_loss = pddm_loss if uses_pddm else None
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")
        # Built in `build`: its output size is the backbone's feature size.
        self.generator: keras.Sequential | None = None
        settings = self.synthesis
        self.generator_optimizer = adam(settings.generator_learning_rate, settings.generator_weight_decay,
                                         "generator_optimizer")
        self.classifier_optimizer = adam(settings.classifier_learning_rate, settings.classifier_weight_decay,
                                          "classifier_optimizer")
        # [J_avg, J_gen_avg], the sums of the current block and its step count, and alpha in use (0 =
        # not calibrated yet: exp(0) = 1, easy). All replicas compute the same global values, so the
        # first replica's write is the right one.
        alpha = self.hardness.alpha
        self.running_means = self._state("running_means", (2,), self.hardness.initial_running_mean)
        self.block_sums = self._state("block_sums", (2,), 0.0)
        self.block_steps = self._state("block_steps", (), 0.0)
        self.alpha_in_use = self._state("alpha_in_use", (), 0.0 if alpha is None else alpha)

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise type every unknown attribute as Any
        def __getattr__(self, name: str) -> Any:
            # Only reached for a name that is not an attribute: the previous release's flat settings
            # (`model.beta`, now `model.hardness.beta`) still read, with a DeprecationWarning.
            return deprecated_setting(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The previous release's flat settings cannot be set any more: a value stored under the old name
        # would be ignored by the train step, which reads the groups (frozen, checked where they are made).
        if name in MOVED:
            raise AttributeError(f"{type(self).__name__}.{name} cannot be set: it is {MOVED[name]}.{name}; build "
                                 f"the model with {MOVED[name]}={GROUPS[MOVED[name]].__name__}({name}=...)")
        super().__setattr__(name, value)

    def _state(self, name: str, shape: tuple[int, ...], value: float) -> keras.Variable:
        return self.add_weight(name=name, shape=shape, trainable=False, aggregation="only_first_replica",
                               initializer=keras.initializers.Constant(value))

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, generator_optimizer: Any = None,
                classifier_optimizer: Any = None, **kwargs: Any) -> None:
        """`keras.Model.compile` with one optimiser per network, as Keras' GAN guide does: `optimizer`
        trains the metric network; `generator_optimizer` and `classifier_optimizer` (an optimiser or
        its Keras name; None keeps the model's own Adam of `synthesis.generator_learning_rate` /
        `synthesis.classifier_learning_rate`) the generator and the classifier. Under a strategy, create them
        in its scope. A saved model's config records the model's own settings, not these objects."""
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        for group, given in (("generator", generator_optimizer), ("classifier", classifier_optimizer)):
            if given is None:
                continue
            given = keras.optimizers.get(given)
            setattr(self, f"{group}_optimizer", given)
            if self.built and not given.built:
                given.build(self.parameter_groups()[group])

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        features = self.backbone.compute_output_shape(input_shape)[-1]
        if self.generator is None:
            self.generator = keras.Sequential([
                keras.layers.Dense(self.synthesis.generator_units, activation="relu", name="hidden"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.Dense(features, name="output"),
            ], name="generator")
        if not self.generator.built:
            width = self.embedding_dim if self.synthesis.generator_input == "single" else 2 * self.embedding_dim
            self.generator.build((None, width))
        if not self.classifier.built:
            self.classifier.build((None, features))
        if self.pddm is not None and not self.pddm.built:
            self.pddm.build((None, self.embedding_dim))
        # Built here, not lazily in the first step: their slots must exist before a checkpoint is
        # restored, and variables cannot be created inside a replica context.
        groups = self.parameter_groups()
        for optimizer, group in ((self.generator_optimizer, "generator"), (self.classifier_optimizer, "classifier")):
            if not optimizer.built:
                optimizer.build(groups[group])

    def hdml_terms(self, images: tf.Tensor, labels: tf.Tensor, training: bool = True) -> dict[str, tf.Tensor]:
        """Every HDML loss of one (replica's) batch: the scalars of `metric_names`.

        The losses are global-batch losses (see `gather_global_batch`); gradients are taken by the
        caller, each w.r.t. its own parameter group.
        """
        if self.generator is None:
            # Its generator's width is the backbone's feature size, known only once built; Keras' fit
            # does not build a subclassed model before tracing the step.
            raise ValueError("build the HDMLModel before fit/evaluate: model.build((None, height, width, channels))")
        # float32 under a mixed-precision policy too: the generator reconstructs these features (J_recon).
        features = tf.cast(self.backbone(images, training=training), tf.float32)
        embeddings = check_embeddings(self._embed(features, training), labels)
        width = features.shape[-1]
        joint, labels = gather_global_batch(tf.concat([features, embeddings], axis=1), labels)
        features, embeddings = joint[:, :width], joint[:, width:]
        m = tf.shape(embeddings)[0]

        rows = self._triplets(labels)
        anchor, positive, negative = self._gather_rows(rows, embeddings)
        real_loss = self._metric_loss(rows, anchor, positive, negative)
        j_avg, j_gen_avg, alpha = self.j_avg, self.j_gen_avg, tf.convert_to_tensor(self.alpha_in_use)
        hard, lambda0 = hardness_aware_negatives(anchor, positive, negative, j_avg, alpha)

        # One generator call for the real and the synthetic samples, so BN normalises them together.
        if self.synthesis.generator_input == "single":
            generator_input = tf.concat([embeddings, hard], 0)
        else:
            generator_input = tf.concat([tf.concat([embeddings, embeddings], 1), tf.concat([anchor, hard], 1)], 0)
        generated = tf.cast(self.generator(generator_input, training=training), tf.float32)
        reconstructed, synthetic = generated[:m], generated[m:]
        generated_embeddings = self._embed(generated, training)
        rebuilt_anchor, rebuilt_positive, _ = self._gather_rows(rows, generated_embeddings[:m])
        synthetic_loss = self._metric_loss(rows, rebuilt_anchor, rebuilt_positive, generated_embeddings[m:])

        source_labels = tf.gather(labels, rows.negatives)
        synthetic_logits = tf.cast(self.classifier(synthetic), tf.float32)
        anchor_logits = tf.cast(self.classifier(tf.gather(reconstructed, rows.anchors)), tf.float32)
        anchor_labels = tf.gather(labels, rows.anchors)
        soft_weight = self.synthesis.soft_weight
        j_recon = (1.0 - soft_weight) * tf.reduce_sum(tf.square(reconstructed - features))
        if self.base == "npair":
            soft = (mean_cross_entropy(source_labels, synthetic_logits)
                    + mean_cross_entropy(anchor_labels, anchor_logits))
        else:  # the authors' triplet code: one mean over [anchors; positives; synthetic negatives]
            positive_logits = tf.cast(self.classifier(tf.gather(reconstructed, rows.positives)), tf.float32)
            soft = mean_cross_entropy(tf.concat([anchor_labels, tf.gather(labels, rows.positives), source_labels], 0),
                                      tf.concat([anchor_logits, positive_logits, synthetic_logits], 0))
        j_soft = soft_weight * self.synthesis.softmax_scale * soft
        classifier_loss = mean_cross_entropy(labels, tf.cast(self.classifier(features), tf.float32))
        accuracy = tf.cast(tf.equal(tf.argmax(synthetic_logits, axis=1, output_type=tf.int32), source_labels),
                           tf.float32)

        real_weight = tf.exp(-self.hardness.beta / j_gen_avg)
        metric_loss = real_weight * real_loss + (1.0 - real_weight) * synthetic_loss if self.synthetic else real_loss
        return {
            "loss": metric_loss,
            "metric_loss_real": real_loss, "metric_loss_synthetic": synthetic_loss,
            "weighted_metric_loss_real": real_weight * real_loss,
            "j_recon": j_recon, "j_soft": j_soft, "j_gen": j_recon + j_soft,
            "j_gen_avg": j_gen_avg, "j_avg": j_avg, "alpha": alpha,
            "easiness": tf.exp(-alpha / tf.maximum(j_avg, EPSILON)), "lambda0": mean(lambda0),
            "classifier_loss": classifier_loss, "synthetic_accuracy": mean(accuracy),
        }

    # -- Keras steps -----------------------------------------------------------------------------

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        self.check_loss_scaling()
        images, labels, _ = self._unpack(data)
        replicas = self.distribute_strategy.num_replicas_in_sync
        with tf.GradientTape(persistent=True) as tape:
            terms = self.hdml_terms(images, labels, training=True)
            metric_objective = terms["loss"]
            if self.losses:
                metric_objective += tf.add_n(self.losses)
            # Each replica holds the full global losses; the strategy sums gradients (see gather_global_batch).
            objectives = {"metric": metric_objective / replicas, "generator": terms["j_gen"] / replicas,
                          "classifier": terms["classifier_loss"] / replicas}
        if not self.optimizer.built:
            # Keras builds the compiled optimizer on all trainable variables when it restores one (and
            # under a strategy); build it the same way here so saved and restored slots always match.
            # The generator's and classifier's slots in it stay unused.
            self.optimizer.build(self.trainable_variables)
        optimizers = {"metric": self.optimizer, "generator": self.generator_optimizer,
                      "classifier": self.classifier_optimizer}
        for group, variables in self.parameter_groups().items():
            gradients = tape.gradient(objectives[group], variables)
            optimizers[group].apply_gradients(zip(gradients, variables))
        del tape
        self._update_running_means(terms["weighted_metric_loss_real"], terms["j_gen"])
        return self._record(terms)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        images, labels, _ = self._unpack(data)
        features = tf.cast(self.backbone(images, training=False), tf.float32)
        embeddings = check_embeddings(self._embed(features, False), labels)
        embeddings, labels = gather_global_batch(embeddings, labels)
        rows = self._triplets(labels)
        tracker = self._trackers["loss"]
        tracker.update_state(self._metric_loss(rows, *self._gather_rows(rows, embeddings)))
        return {"loss": tracker.result()}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, base=self.base,
                      hardness=keras.saving.serialize_keras_object(self.hardness),
                      synthesis=keras.saving.serialize_keras_object(self.synthesis),
                      triplet_margin=self.triplet_margin, normalize_embeddings=self.normalize_embeddings,
                      npair_reg=self.npair_reg, seed=self.seed, synthetic=self.synthetic,
                      pddm=keras.saving.serialize_keras_object(self.pddm),
                      pddm_loss=keras.saving.serialize_keras_object(self.pddm_loss))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HDMLModel:
        # Saved before the N-pair base trained on unnormalised embeddings: unit-norm, no regulariser.
        config = {"normalize_embeddings": True, "npair_reg": 0.0, **config}
        for key in ("pddm", "pddm_loss"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        # A config of the previous release holds the settings flat: grouped here, without a warning
        # (whoever loads a saved model did not write that spelling; saving it again writes the new one).
        given = {group: config.pop(group, None) for group in GROUPS}
        config.update(take_flat_settings(given, config, warn=False))
        return super().from_config(config)
