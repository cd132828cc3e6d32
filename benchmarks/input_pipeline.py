"""Throughput of the input pipelines on CUB-like JPEGs, side by side in one run.

Generates --num_images JPEGs of --width x --height RGB pixels in --num_classes class folders
(smooth class-coloured gradients, shapes and mild texture: compressible like photographs,
about 40 kB each), then measures images/s of:

  bare_decode    tf.io.read_file + tf.io.decode_jpeg, same parallelism (AUTOTUNE), no resize
  train          class_balanced_dataset (P x K sampling) + decode + random resized crop + flip
  train_plain    class_balanced_dataset with the default pipeline (whole image resized, no augmentation)
  eval           evaluation_dataset: decode + shorter side to --resize_size + centre crop
  eval_cached    the same with cache=True, after one pass has filled the cache

and the cost of one pass of the in-graph P x K sampler (`data.balanced_batch_indices`) on label
arrays of Stanford Online Products' and ImageNet's sizes (no files needed).

Each round builds a fresh iterator per pipeline, consumes --warmup_batches, then times
--batches batches; the pipelines take turns within a round, so that load from other jobs
affects them alike. Reported: median (and min, max) over --rounds of images/s.

  python benchmarks/input_pipeline.py --json=benchmarks/results/input_pipeline/results.json
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image, ImageDraw

from pddm_tf import data
from pddm_tf.data import transforms

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 2000, "JPEGs to generate.")
flags.DEFINE_integer("num_classes", 200, "Class folders (CUB-200 has 200).")
flags.DEFINE_integer("width", 500, "Image width (CUB images are mostly 500 x 3xx).")
flags.DEFINE_integer("height", 375, "Image height.")
flags.DEFINE_integer("quality", 90, "JPEG quality.")
flags.DEFINE_integer("image_size", 224, "Network input side.")
flags.DEFINE_integer("resize_size", 256, "Evaluation: shorter side before the centre crop.")
flags.DEFINE_integer("batch_classes", 16, "P.")
flags.DEFINE_integer("batch_per_class", 4, "K.")
flags.DEFINE_integer("warmup_batches", 3, "Batches consumed before timing, per round and pipeline.")
flags.DEFINE_integer("batches", 12, "Timed batches per round and pipeline.")
flags.DEFINE_integer("rounds", 5, "Rounds; the median over rounds is reported.")
flags.DEFINE_bool("cached_eval", True, "Also measure the evaluation pipeline with cache=True (holds "
                  "num_images decoded images in memory).")
flags.DEFINE_bool("sampler", True, "Also time one sampling pass at SOP and ImageNet scale.")
flags.DEFINE_string("data_dir", None, "Where to write the JPEGs (default: a temporary folder, deleted after).")
flags.DEFINE_string("json", None, "Write the results here.")


def generate_jpegs(root: pathlib.Path, num_images: int, num_classes: int, width: int, height: int,
                   quality: int, seed: int = 0) -> None:
    """Writes num_images JPEGs into root/class_CCC/img_IIIII.jpg, round-robin over the classes.

    Each class has two colours; an image is a gradient between them at a random angle, with
    6 to 12 ellipses and rectangles in jittered class colours and Gaussian texture (std 6).
    """
    rng = np.random.default_rng(seed)
    palettes = rng.integers(0, 256, (num_classes, 2, 3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(num_images):
        label = i % num_classes
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 2  # about [0, 1]
        low, high = palettes[label]
        pixels = low + np.clip(ramp, 0, 1)[..., None] * (high - low)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(6, 13)):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
            colour = tuple(int(c) for c in np.clip(palettes[label, rng.integers(2)] + rng.normal(0, 30, 3), 0, 255))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (height, width, 3))
        path = root / f"class_{label:03d}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=quality)


def bare_decode_dataset(files: data.ImageFiles, batch_size: int) -> tf.data.Dataset:
    """Read + decode_jpeg only, with the pipelines' parallelism, batched (all images share a size)."""
    return (
        tf.data.Dataset.from_tensor_slices(files.paths)
        .repeat()
        .map(lambda path: tf.io.decode_jpeg(tf.io.read_file(path), channels=3),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def time_pipeline(dataset: tf.data.Dataset, warmup: int, batches: int) -> float:
    """Images/s over `batches` batches of a fresh iterator, after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        element = next(iterator)
        images += int((element[0] if isinstance(element, tuple) else element).shape[0])
    seconds = time.perf_counter() - start
    del iterator  # Stops its background threads before the next pipeline runs.
    return images / seconds


# (rows, classes) of the sampler timings: SOP's training split has 59,551 images of 11,318
# classes; 120k rows / 22,634 classes is the whole of SOP; ImageNet-1k's training set.
SAMPLER_SCALES = {"sop_train": (59_551, 11_318), "sop_all": (120_053, 22_634), "imagenet": (1_281_167, 1000)}


def time_sampler(num_rows: int, num_classes: int, batch_classes: int, batch_per_class: int,
                 passes: int = 5) -> dict[str, float]:
    """Median seconds of one traced `balanced_batch_indices` pass over random labels, and its batches."""
    labels = tf.constant(np.random.default_rng(0).integers(0, num_classes, num_rows), tf.int32)
    sample = tf.function(lambda seed: data.balanced_batch_indices(labels, num_classes, batch_classes,
                                                                   batch_per_class, seed))
    batches = int(sample(tf.constant([0, 0], tf.int64)).shape[0])  # Traces.
    seconds = []
    for p in range(1, passes + 1):
        start = time.perf_counter()
        sample(tf.constant([0, p], tf.int64)).numpy()
        seconds.append(time.perf_counter() - start)
    return {"rows": num_rows, "classes": num_classes, "batches_per_pass": batches,
            "seconds_per_pass": statistics.median(seconds)}


def main(argv: list[str]) -> None:
    del argv
    owned = FLAGS.data_dir is None
    root = pathlib.Path(tempfile.mkdtemp(prefix="cub_like_") if owned else FLAGS.data_dir)
    try:
        run(root)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def run(root: pathlib.Path) -> None:
    start = time.perf_counter()
    if not any(root.rglob("*.jpg")):
        generate_jpegs(root, FLAGS.num_images, FLAGS.num_classes, FLAGS.width, FLAGS.height, FLAGS.quality)
    generation_s = time.perf_counter() - start
    files = data.load_folder(str(root), test_fraction=0, validate=False).train
    jpeg_bytes = sum(pathlib.Path(p).stat().st_size for p in files.paths)
    print(f"{len(files)} JPEGs, {files.num_classes} classes, {FLAGS.width}x{FLAGS.height}, "
          f"mean {jpeg_bytes / len(files) / 1024:.1f} kB, generated in {generation_s:.1f} s")

    size, p, k = FLAGS.image_size, FLAGS.batch_classes, FLAGS.batch_per_class
    batch = p * k
    eval_transform = transforms.eval_transform(size, FLAGS.resize_size)
    pipelines = {
        "bare_decode": bare_decode_dataset(files, batch),
        "train": data.class_balanced_dataset(files, p, k, size, 3, seed=0, augment=transforms.train_transform(size)),
        "train_plain": data.class_balanced_dataset(files, p, k, size, 3, seed=0),
        "eval": data.evaluation_dataset(files, size, 3, batch, transform=eval_transform).repeat(),
    }
    if FLAGS.cached_eval:
        cached = data.evaluation_dataset(files, size, 3, batch, transform=eval_transform, cache=True)
        fill_start = time.perf_counter()
        for _ in cached:  # One complete pass fills the in-memory cache.
            pass
        print(f"eval cache filled in {time.perf_counter() - fill_start:.1f} s")
        pipelines["eval_cached"] = cached.repeat()

    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_index in range(FLAGS.rounds):
        for name, dataset in pipelines.items():
            rates[name].append(time_pipeline(dataset, FLAGS.warmup_batches, FLAGS.batches))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.0f}" for n, r in rates.items()), flush=True)

    bare = statistics.median(rates["bare_decode"])
    print(f"\n| pipeline | images/s (median of {FLAGS.rounds}) | min - max | vs bare decode |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {min(values):.0f} - {max(values):.0f} | {median / bare:.2f} |")
    sampler = {}
    if FLAGS.sampler:
        print(f"\n| sampler pass ({p} x {k}) | rows | classes | batches per pass | s per pass |")
        print("|---|---|---|---|---|")
        for name, (num_rows, num_classes) in SAMPLER_SCALES.items():
            sampler[name] = time_sampler(num_rows, num_classes, p, k)
            row = sampler[name]
            print(f"| {name} | {num_rows:,} | {num_classes:,} | {row['batches_per_pass']} | "
                  f"{row['seconds_per_pass']:.3f} |")
    load_after = os.getloadavg()
    print(f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"nice {os.nice(0)}; {os.cpu_count()} CPUs")

    if FLAGS.json:
        payload = {
            "config": {name: FLAGS[name].value for name in (
                "num_images", "num_classes", "width", "height", "quality", "image_size", "resize_size",
                "batch_classes", "batch_per_class", "warmup_batches", "batches", "rounds", "cached_eval")},
            "dataset": {"images": len(files), "classes": files.num_classes,
                        "mean_jpeg_kb": jpeg_bytes / len(files) / 1024},
            "images_per_s": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
                             for name, v in rates.items()},
            "sampler": sampler,
            "environment": {
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                "cpus": os.cpu_count(), "nice": os.nice(0),
                "load_average_before": load_before, "load_average_after": load_after,
                "tensorflow": tf.__version__, "python": platform.python_version(),
            },
        }
        path = pathlib.Path(FLAGS.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {path}")


if __name__ == "__main__":
    app.run(main)
