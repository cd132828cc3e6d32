"""`pddm-tf`: train, evaluate and export embedding models from the command line.

  pddm-tf train [flags]      train on a dataset, print held-out retrieval metrics, export
  pddm-tf evaluate [flags]   evaluate an exported SavedModel on a dataset's held-out classes
  pddm-tf export [flags]     a `.keras` model (train --save_model) -> the next TF Serving version, with an
                             optional `search` gallery (BUILD.md, "Serving with TF Serving")
  pddm-tf index|search       a gallery in Milvus: embed a folder with an export / search it (gallery_commands.py)

`pddm-tf train --epochs=0` evaluates and exports the untrained model: the baseline to compare with.
An interrupted or failed `train` is carried on by running the same command again (README, "When things go wrong").
Exit codes: 0 done, 1 an error while running, 2 a flag refused before any work started, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

# Only TensorFlow-free modules at the top: `pddm-tf --help` must not import TensorFlow.
from pddm_tf import atomic
from pddm_tf.cli import gallery_commands, logs, validation
from pddm_tf.methods.names import METHOD_NAMES
from pddm_tf.training.config import TrainConfig
from pddm_tf.training.run import CURRENT_RUN as _RUN

FLAGS = flags.FLAGS
#: `pddm-tf train`'s defaults are those of `TrainConfig`: one source for the CLI and Python.
_D = TrainConfig()

_COMMANDS = ("train", "evaluate", "export", *gallery_commands.COMMANDS)

flags.DEFINE_string("recipe", None, "A paper setting from pddm_tf.methods.recipes (e.g. pddm_cub, hdml_sop, "
                    "dc_cars): sets the flags below; flags given on the command line win.")
flags.DEFINE_string("dataset", _D.dataset, "Dataset: 'omniglot' (embedded), 'folder:PATH', or through "
                    "tensorflow-datasets: cub200, cars196, sop, tfds_omniglot, imagenet2012.")
flags.DEFINE_string("data_dir", _D.data_dir, "TFDS datasets: the tensorflow-datasets data directory.")
flags.DEFINE_string("cache_dir", _D.cache_dir, "TFDS datasets: where the extracted image files go (default under "
                    "data_dir).")
flags.DEFINE_bool("download", _D.download, "TFDS datasets: download and prepare the data if it is not there yet.")
flags.DEFINE_string("manual_dir", _D.manual_dir, "TFDS datasets: directory with manually downloaded files (Cars196, "
                    "ImageNet).")
flags.DEFINE_float("test_fraction", _D.test_fraction, "Fraction of classes held out for testing (0 = train on all).")
flags.DEFINE_enum("split_by", _D.split_by, ["character", "alphabet"], "Split unit: single classes, or whole "
                  "alphabets (Omniglot) / top-level folders (folder:PATH), so no group is on both sides.")
flags.DEFINE_list("test_groups", _D.test_groups, "Hold out these alphabets / top-level folders (e.g. Greek,Latin); "
                  "overrides --test_fraction and --split_by.")
flags.DEFINE_bool("rotations", _D.rotations, "Add 90/180/270-degree rotations of the training classes as new classes "
                  "(any dataset; held-out classes stay upright).")
flags.DEFINE_integer("seed", _D.seed, "Seed for the class split, sampling and initialisation.")
flags.DEFINE_integer("image_size", _D.image_size, "Images are resized to image_size x image_size.")
flags.DEFINE_bool("augment", _D.augment, "The papers' pipeline: random resized crop + horizontal flip for training, "
                  "resize (image_size * 8/7) + centre crop for evaluation. Off: plain resize.")
flags.DEFINE_bool("affine", _D.affine, "Small random affine distortions of training images (rotation, shear, scale, "
                  "shift; Koch et al. 2015), for characters and drawings; no flip.")
flags.DEFINE_enum("small_classes", _D.small_classes, ["error", "cycle"],
                  "Classes with fewer than batch_per_class images: refuse them, or cycle their images (SOP).")
flags.DEFINE_integer("channels", _D.channels, "Image channels (default: 1 for omniglot, 3 for folders).")
flags.DEFINE_string("json", _D.json, "Write the final held-out metrics to this JSON file.")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Batch size for embedding the evaluation images.")
flags.DEFINE_list("episodes", list(_D.episodes),
                  "Few-shot settings <N>way<K>shot evaluated on the held-out classes (N classes of one alphabet / "
                  "top-level folder, support and query by different drawers); empty to skip.")
flags.DEFINE_integer("num_episodes", _D.num_episodes, "Episodes per few-shot setting.")
flags.DEFINE_integer("rerank", _D.rerank, "PDDM ranking: re-rank each query's Euclidean top-R shortlist by the "
                     "learned PDDM score (0 = plain Euclidean retrieval).")

# train
flags.DEFINE_string("method", _D.method,
                    "Training method: PDDM (quadruplet, triplet), the Euclidean-mining ablation, a baseline "
                    "loss, HDML over a base loss (hdml_npair, hdml_triplet, hdml_pddm), or Divide-and-Conquer "
                    f"over the margin or PDDM loss (dc_margin, dc_pddm): one of {', '.join(METHOD_NAMES)}, or a "
                    "method that a --plugins module registers.")
flags.DEFINE_list("plugins", [], "Python modules to import before the command runs (importable names, e.g. "
                  "my_project.metric_learning): a module can register a method "
                  "(pddm_tf.methods.register_method), a dataset (pddm_tf.data.DATASETS.register), a search backend "
                  "(pddm_tf.evaluation.SEARCH_BACKENDS.register) or a miner (a pddm_tf.miners.Miner subclass), "
                  "whose names --method, --dataset and --loss_options then accept.")
flags.DEFINE_enum("mining", _D.mining, ["per_pair", "hardest"],
                  "Quadruplets per batch: one per positive pair, or the single hardest (the paper).")
flags.DEFINE_enum("mining_score", _D.mining_score, ["pddm", "euclidean"],
                  "PDDM methods: similarity that mining ranks pairs by (default: the method's own; "
                  "pddm_quadruplet with euclidean is the euclidean_quadruplet ablation).")
flags.DEFINE_bool("pddm_normalize_inputs", _D.pddm_normalize_inputs, "pddm_quadruplet, pddm_triplet, "
                  "euclidean_quadruplet: L2-normalise the PDDM's inputs u = |f_i - f_j| and v = (f_i + f_j)/2 "
                  "(the paper's reading; the score then cannot see the distance of two unit embeddings, see PDDM). "
                  "Off by default: raw inputs learned better on the few-shot protocol (BENCHMARKS.md section 2).")
flags.DEFINE_integer("embedding_dim", _D.embedding_dim, "Embedding size d.")
flags.DEFINE_string("backbone", _D.backbone, "Backbone: small_convnet or a keras.applications network "
                    "(ResNet50, InceptionV3, EfficientNetV2B0, ConvNeXtTiny, MobileNetV3Small, ...).")
flags.DEFINE_enum("weights", _D.weights, ["none", "imagenet"], "Backbone initialisation (imagenet: downloaded by "
                  "Keras).")
flags.DEFINE_enum("pooling", _D.pooling, ["avg", "max", "gem"], "Global pooling of the backbone's feature map.")
flags.DEFINE_enum("mixed_precision", _D.mixed_precision, ["none", "float16", "bfloat16"],
                  "Mixed precision: the network computes in float16 (GPUs; with loss scaling) or bfloat16 (TPUs, "
                  "recent GPUs and CPUs), its variables stay float32, and the embedding, losses and PDDM scores are "
                  "float32 (keras.mixed_precision). HDML and Divide-and-Conquer take bfloat16 only.")
flags.DEFINE_bool("freeze_batchnorm", _D.freeze_batchnorm, "Keep the backbone's BatchNorm statistics (and gamma, "
                  "beta) fixed.")
flags.DEFINE_float("dropout", _D.dropout, "Dropout before the embedding projection.")
flags.DEFINE_integer("backbone_width", _D.backbone_width, "Filters per block of the small convolutional backbone.")
flags.DEFINE_integer("epochs", _D.epochs, "Training epochs (0 = evaluate and export the untrained model).")
flags.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch, "Gradient steps per epoch (0 = one pass over the "
                     "training images).")
flags.DEFINE_integer("batch_classes", _D.batch_classes, "P: classes per batch.")
flags.DEFINE_integer("batch_per_class", _D.batch_per_class, "K: images per class in a batch.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam learning rate (the peak of a schedule).")
flags.DEFINE_float("weight_decay", _D.weight_decay, "Decoupled weight decay (AdamW) per unit learning rate; 0 = "
                   "plain Adam.")
flags.DEFINE_enum("lr_schedule", _D.lr_schedule, ["constant", "cosine"], "Learning-rate schedule over the whole run.")
flags.DEFINE_float("warmup_fraction", _D.warmup_fraction, "Fraction of the steps with a linear learning-rate warm-up.")
flags.DEFINE_float("ema_momentum", _D.ema_momentum, "Keep an exponential moving average of the weights with this "
                   "momentum (e.g. 0.99) and end training with it; 0 = off.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "XLA: the whole train step for the methods whose step compiles, "
                  "and PDDM's all-pairs mining scores for the PDDM methods (whose mining keeps data-dependent "
                  "shapes). Off: Keras' 'auto' (XLA on a GPU where the step compiles). BENCHMARKS.md section "
                  "10 measures it.")
flags.DEFINE_string("loss_options", None, "Baseline-loss methods (contrastive, triplet_*, "
                    "lifted_structured, npair, margin, multi_similarity): a JSON object of the loss's "
                    "hyperparameters, e.g. "
                    "'{\"margin\": 0.3}' or '{\"distance\": \"cosine\"}' for triplet_*, contrastive and "
                    "lifted_structured (methods.loss_hyperparameters lists them; an unknown one is refused).")
flags.DEFINE_float("alpha", _D.alpha, "Margin of the PDDM-score hinge (E_m).")
flags.DEFINE_float("beta", _D.beta, "Margin of the squared-distance hinge (E_e).")
flags.DEFINE_float("embedding_weight", _D.embedding_weight, "lambda, the weight of the embedding loss E_e.")
flags.DEFINE_float("hdml_alpha", _D.hdml_alpha, "HDML: hardness temperature alpha; unset: calibrated at the end of "
                   "the first 64-step block for unit-norm embeddings (HDMLModel); 90 = the original's constant.")
flags.DEFINE_enum("hdml_generator_input", _D.hdml_generator_input, ["single", "anchor_pair"],
                  "HDML: the generator takes single embeddings (the original) or [anchor; sample] pairs.")
flags.DEFINE_float("hdml_beta", _D.hdml_beta, "HDML: weighting temperature beta.")
flags.DEFINE_bool("hdml_synthetic", _D.hdml_synthetic, "HDML: train on the synthetic negatives; --nohdml_synthetic "
                  "trains the base loss alone on HDML's rows, the exact 'without HDML' twin of a run (for ablations).")
flags.DEFINE_integer("num_learners", _D.num_learners, "Divide-and-Conquer: K clusters / embedding slices "
                     "(embedding_dim must be divisible by it).")
flags.DEFINE_integer("recluster_every", _D.recluster_every, "Divide-and-Conquer: re-cluster every T epochs (0 = "
                     "cluster once).")
flags.DEFINE_integer("conquer_epochs", _D.conquer_epochs, "Divide-and-Conquer: final epochs that train the whole "
                     "embedding on all data.")
flags.DEFINE_enum("cluster_on", _D.cluster_on, ["features", "embeddings"],
                  "Divide-and-Conquer: cluster the backbone features (the authors) or the embeddings.")
flags.DEFINE_integer("eval_every", _D.eval_every, "Evaluate held-out retrieval every N epochs during training (0 = "
                     "off).")
flags.DEFINE_string("export_dir", _D.export_dir, "Export a TF Serving SavedModel under this directory "
                    "(<dir>/<version>/).")
flags.DEFINE_bool("backup", _D.backup, "Fault tolerance (keras BackupAndRestore): back up the whole training state "
                  "between epochs and, when the same command is run again after an interruption, resume from it "
                  "exactly.")
flags.DEFINE_string("backup_dir", _D.backup_dir, "Where the backups go (deleted once training has completed and "
                    "every output is written). Default: a folder under the system temp dir named by a hash of the "
                    "flags, so the same command finds it. Multi-worker runs must give one on storage every worker "
                    "sees.")
flags.DEFINE_bool("strict", _D.strict, "Fail, rather than warn, after an epoch that learned nothing (valid_fraction 0, "
                  "or a loss of exactly 0 at every step).")

# distribution
flags.DEFINE_enum("strategy", _D.strategy, ["default", "mirrored", "multi_worker"],
                  "default: one device; mirrored: every local device; multi_worker: one worker of a cluster "
                  "(MultiWorkerMirroredStrategy; the cluster comes from --worker_hosts or TF_CONFIG).")
flags.DEFINE_list("worker_hosts", _D.worker_hosts, "multi_worker: host:port of every worker, the same list for every "
                  "worker (sets TF_CONFIG). Without it TF_CONFIG must be set, e.g. by a scheduler.")
flags.DEFINE_integer("task_index", _D.task_index, "multi_worker with --worker_hosts: this worker's index in the list "
                     "(0 = chief).")
flags.DEFINE_enum("communication", _D.communication, ["auto", "ring", "nccl"], "multi_worker: collective "
                  "implementation.")

# evaluate
flags.DEFINE_string("model_dir", None, "evaluate: a SavedModel version folder, or a base folder (latest version).")
flags.DEFINE_string("plots", None, "evaluate: write PNG pictures of the result into this folder: a retrieval grid, "
                    "the positive/negative pair-distance histogram, a t-SNE map and the Recall@K curve "
                    "(needs matplotlib: pip install \"pddm-tf[plots]\").")

# runtime
flags.DEFINE_bool("onednn", False, "Use oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS=1). TensorFlow turns them on by "
                  "itself only on some Intel CPUs; on this project's AMD machine they looked faster in one "
                  "unbenchmarked measurement (issue 17 will measure them). Off by default because on CPUs "
                  "without AVX-512 TensorFlow then logs an ERROR line about a uint8 fallback at run time. Results "
                  "differ from the plain kernels in the last float32 bits. Without the flag on the command line, a "
                  "TF_ENABLE_ONEDNN_OPTS already in the environment wins.")

# output
flags.DEFINE_bool("progress", _D.progress, "Progress bars for long steps (folder checks, TFDS extraction, embedding, "
                  "k-means, kNN); drawn only when the output is a terminal. --noprogress turns them off.")
# absl.logging defines --log_dir (for log files this tool never writes) and --verbosity: reused here.
FLAGS["log_dir"].help = ("train: write TensorBoard logs here: training scalars, held-out metrics and a retrieval "
                         "grid at each evaluation (--eval_every, else the end), and the Embedding Projector "
                         "files of the held-out set.")
FLAGS["verbosity"].help = ("Logging verbosity: -1 warnings, 0 (default) also pddm_tf's info, 1 debug and every "
                           "TensorFlow log (otherwise TensorFlow shows warnings and errors only, its C++ code "
                           "errors only unless TF_CPP_MIN_LOG_LEVEL is set).")
flags.declare_key_flag("log_dir")
flags.declare_key_flag("verbosity")

# train --save_model, export
flags.DEFINE_string("save_model", _D.save_model, "train: also save the trained Keras model to this .keras file "
                    "(atomically), the input of `pddm-tf export`.")
flags.DEFINE_string("keras_model", None, "export: the .keras model file to export (from train --save_model).")
flags.DEFINE_string("gallery", None, "export: add a `search` signature over this gallery: 'folder:PATH' (every image "
                    "below PATH, id = its relative path) or a dataset name (its held-out images, id = class/file).")
flags.DEFINE_integer("search_k", 10, "export: neighbours returned by `search` (fixed in the SavedModel).")
flags.DEFINE_integer("search_rerank", 0, "export: `search` re-ranks the Euclidean top-R by the PDDM score "
                     "(R, fixed in the SavedModel; 0 = off).")
# The default is pddm_tf.data.image_header.MAX_IMAGE_PIXELS (a test checks), written out to keep TensorFlow unimported.
flags.DEFINE_integer("max_image_pixels", _D.max_image_pixels, "Images whose header declares more pixels (width x "
                     "height) are "
                     "refused before decoding: skipped by folder checks, an error in the training and evaluation "
                     "pipelines, and an InvalidArgumentError from the exported SavedModel (the limit is fixed in it).")


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes JSON atomically: a reader sees the old file or the whole new one."""
    atomic.write_json(path, payload, indent=2, sort_keys=True)


def _apply_recipe(announce: bool = True) -> None:
    """Sets the recipe's flag values, except those given on the command line (idempotent)."""
    from pddm_tf.methods.recipes import get_recipe

    if not FLAGS.recipe:
        return
    try:
        recipe = get_recipe(FLAGS.recipe)
    except ValueError as error:
        raise validation.FlagError(f"--recipe={FLAGS.recipe}: {error}") from None
    for name, value in recipe.flags.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
    if announce:
        print(f"recipe {recipe.name}: {recipe.paper}")


def _check_flags(command: str) -> None:
    """Refuses bad flag values before any work starts (`validation.FlagError`, exit code 2)."""
    if command in gallery_commands.COMMANDS:
        return gallery_commands.check_flags(command, {name: FLAGS[name].value for name in FLAGS})
    validation.check_flags(command, {name: FLAGS[name].value for name in FLAGS})


def _import_plugins() -> None:
    """Imports the --plugins modules, which register their methods, datasets, backends and miners."""
    import importlib

    for name in FLAGS.plugins:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise validation.FlagError(f"--plugins: cannot import {name!r}: {error}") from None


def _check_episodes() -> None:
    """Refuses a malformed --episodes setting before any work (the parser needs TensorFlow's modules)."""
    from pddm_tf.evaluation import few_shot

    for setting in FLAGS.episodes or ():
        try:
            few_shot.parse_setting(setting)
        except ValueError as error:
            raise validation.FlagError(f"--episodes: {error}") from None


def _config() -> TrainConfig:
    """The `TrainConfig` of the flags (after the recipe's values are applied); --log_dir counts only
    when given on the command line (absl's default may come from TEST_TMPDIR)."""
    values: dict[str, Any] = {name: FLAGS[name].value for name in TrainConfig.field_names() if name != "log_dir"}
    values["log_dir"] = FLAGS.log_dir if FLAGS["log_dir"].present and FLAGS.log_dir else None
    return TrainConfig(**values)


def _load_split(rotate_training: bool = True):
    """The dataset split of the flags (`training.load_split`)."""
    from pddm_tf.training import run

    return run.load_split(_config(), rotate_training)


def _report(metrics: dict[str, float], header: str) -> None:
    from pddm_tf.training import run

    run.report(metrics, header, FLAGS.json)


def _few_shot(embeddings, files, say: Callable[..., None] = print) -> dict[str, float]:
    from pddm_tf.training import run

    return run.few_shot_metrics(_config(), embeddings, files, say)


def build_model(channels: int, num_classes: int, total_steps: int | None = None):
    """The model `pddm-tf train` trains, from the flags (`training.build_model`)."""
    from pddm_tf.training import run

    return run.build_model(_config(), channels, num_classes, total_steps)


def _method_settings(num_classes: int) -> dict[str, Any]:
    """Every method option, from the flags (`training.run.method_settings`)."""
    from pddm_tf.training import run

    return run.method_settings(_config(), num_classes)


def _with_pixel_limit(command: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """Runs `command` with --max_image_pixels as the loaders' limit, restored after."""
    import functools

    @functools.wraps(command)
    def run() -> dict[str, float]:
        from pddm_tf.training.run import pixel_limit

        with pixel_limit(FLAGS.max_image_pixels):
            return command()

    return run


def train() -> dict[str, float]:
    """`pddm-tf train`: `pddm_tf.training.train` of the flags' `TrainConfig`."""
    _apply_recipe(announce=False)  # main applied and announced it; a direct call from Python may not have
    _check_flags("train")
    _check_episodes()
    from pddm_tf.training import train as train_config

    return train_config(_config())


def export() -> dict[str, float]:
    """`pddm-tf export`: --keras_model -> the next version under --export_dir, with `search` if --gallery."""
    _check_flags("export")
    from pddm_tf.data import transforms
    from pddm_tf.data.tfds_loaders import TFDS_LOADERS
    from pddm_tf.export import export_saved_model, image_geometry, load_gallery, load_keras_model

    model = load_keras_model(FLAGS.keras_model)
    if FLAGS.search_rerank > 0 and getattr(model, "pddm", None) is None:
        raise validation.FlagError(f"--search_rerank={FLAGS.search_rerank} re-ranks by a learned PDDM score, but "
                                       f"{FLAGS.keras_model} is a model without a PDDM unit")
    size, channels = image_geometry(model)
    # A model trained with --augment was evaluated on resized, centre-cropped images: serve the same.
    transform = transforms.eval_transform(size) if FLAGS.augment else None
    gallery = None
    if FLAGS.gallery:
        kwargs: dict[str, Any] = {}
        if FLAGS.gallery == "omniglot":
            kwargs.update(split_by=FLAGS.split_by)
        elif not FLAGS.gallery.startswith("folder:"):
            kwargs.update(channels=channels)
        if FLAGS.gallery in TFDS_LOADERS:
            kwargs.update(data_dir=FLAGS.data_dir, cache_dir=FLAGS.cache_dir, download=FLAGS.download,
                          manual_dir=FLAGS.manual_dir)
        gallery = load_gallery(model, FLAGS.gallery, size, channels, test_fraction=FLAGS.test_fraction,
                               seed=FLAGS.seed, batch_size=FLAGS.eval_batch_size, transform=transform, **kwargs)
        print(f"gallery {FLAGS.gallery}: {len(gallery.ids)} images embedded")
    path = export_saved_model(model, FLAGS.export_dir, size, channels, gallery=gallery, search_k=FLAGS.search_k,
                              rerank=FLAGS.search_rerank, transform=transform, max_image_pixels=FLAGS.max_image_pixels)
    print(f"SavedModel exported to {path}")
    return {}


@_with_pixel_limit
def evaluate() -> dict[str, float]:
    import tensorflow as tf

    from pddm_tf import data, evaluation
    from pddm_tf.data import transforms
    from pddm_tf.export import load_saved_model

    _check_flags("evaluate")
    _check_episodes()
    model_dir, signatures = load_saved_model(FLAGS.model_dir)
    embed = signatures["embed_pixels"]
    pair_scores = None
    if FLAGS.rerank > 0:
        if "pddm_similarity" not in signatures:
            raise validation.FlagError(f"--rerank={FLAGS.rerank} re-ranks by a learned PDDM score, but {model_dir} "
                                           "was exported from a model without a PDDM unit (no pddm_similarity "
                                           "signature)")
        similarity = signatures["pddm_similarity"]

        def pair_scores(a, b):
            return similarity(embeddings_a=tf.constant(a), embeddings_b=tf.constant(b))["scores"].numpy()

    _, _, size, channels = embed.structured_input_signature[1]["pixels"].shape
    split, _ = _load_split(rotate_training=False)
    files = split.test if split.test is not None else split.train
    transform = transforms.eval_transform(size) if FLAGS.augment else None
    pixels = data.evaluation_dataset(files, size, channels, FLAGS.eval_batch_size, transform=transform)
    from pddm_tf import progress

    batches = progress.bar(pixels, total=-(-len(files) // FLAGS.eval_batch_size), desc="embedding", unit="batch")
    embeddings = tf.concat([embed(pixels=x)["embeddings"] for x, _ in batches], axis=0).numpy()
    metrics = evaluation.evaluate_retrieval(embeddings, files.labels, seed=FLAGS.seed, rerank=FLAGS.rerank,
                                            pair_scores=pair_scores)
    metrics.update(_few_shot(embeddings, files))
    _report(metrics, f"{model_dir} on {FLAGS.dataset} ({files.num_classes} classes, {len(files)} images)")
    if FLAGS.plots:
        from pddm_tf import progress
        from pddm_tf.evaluation import visualize

        written = visualize.save_plots(FLAGS.plots, embeddings, files.labels,
                                       visualize.load_file_images(files, size, channels, transform),
                                       files.class_names, seed=FLAGS.seed,
                                       progress=lambda names: progress.bar(names, desc="plots", unit="plot"))
        print(f"plots written to {FLAGS.plots}: {', '.join(os.path.basename(p) for p in written.values())}")
    return metrics


#: The exit code after Ctrl-C: 128 + SIGINT, as shells report it (usage errors: `validation.EXIT_USAGE`).
EXIT_INTERRUPTED = 130


def _interrupted_message() -> str:
    """The one line printed on Ctrl-C: how to carry on, from what the backup on disk holds."""
    from pddm_tf.training.fault_tolerance import backup_status

    if not _RUN.get("backup_dir"):
        return "interrupted"
    status = backup_status(_RUN["backup_dir"])
    if status is not None and status.get("complete"):
        return (f"interrupted; run the same command again to write the outputs (training completed: "
                f"{status['epoch']} epochs backed up in {_RUN['backup_dir']})")
    epoch = (status["epoch"] if status else 0) + 1
    return (f"interrupted; run the same command again to resume from epoch {epoch} of {_RUN['epochs']} "
            f"(backed up in {_RUN['backup_dir']})")


def _select_cpu_kernels() -> None:
    """Sets TF_ENABLE_ONEDNN_OPTS from --onednn, which only matters before TensorFlow is imported (a
    process that imported it already, e.g. a test calling `main`, keeps its kernels and environment)."""
    if "tensorflow" in sys.modules:
        return
    if FLAGS["onednn"].present:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = str(int(FLAGS.onednn))


def main(argv: list[str]) -> None:
    commands: dict[str, Callable[[], dict[str, float]]] = {"train": train, "evaluate": evaluate, "export": export,
                                                           **gallery_commands.COMMANDS}
    try:
        if len(argv) != 2 or argv[1] not in commands:
            raise app.UsageError(f"usage: pddm-tf {{{'|'.join(_COMMANDS)}}} [--flags]; got {argv[1:]}")
        if argv[1] == "train":
            _apply_recipe()
        if FLAGS.plugins:  # they may import TensorFlow: quietly, with the chosen kernels
            _select_cpu_kernels()
            logs.import_tensorflow(FLAGS.verbosity)
            _import_plugins()
        _check_flags(argv[1])  # without plugins, before TensorFlow is imported: a refused command returns at once
        _select_cpu_kernels()
        logs.import_tensorflow(FLAGS.verbosity)
        from pddm_tf import progress

        progress.set_enabled(None if FLAGS.progress else False)
        commands[argv[1]]()
    except (app.UsageError, validation.FlagError) as error:
        validation.usage_exit(str(error))
    except KeyboardInterrupt:
        print(f"pddm-tf: {_interrupted_message()}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except (ValueError, OSError) as error:
        # Bad data or arguments: a one-line message is more useful than a traceback.
        message = str(error)
        if _RUN.get("trained"):
            message += (f"; the trained model is kept in {_RUN['backup_dir']}: run the same command again to "
                        "write the outputs without training")
        sys.exit(f"pddm-tf: error: {message}")


def run() -> None:
    """Console-script entry point."""
    # absl's --help prints the __main__ module's docstring and the key flags of sys.argv[0]. The
    # console script's __main__ is a generated wrapper without either, so `pddm-tf --help` would
    # list no flag at all: lend it this module's.
    sys.modules["__main__"].__doc__ = __doc__
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    # One line and exit code 2 for a flag absl cannot parse, as for every other usage error.
    app.run(main, flags_parser=validation.parse_flags)
