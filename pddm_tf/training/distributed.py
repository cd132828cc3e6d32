"""Training and embedding on several devices and machines, with TensorFlow's own strategies.

* `make_strategy`: the default strategy, `MirroredStrategy` (the devices of one machine) or
  `MultiWorkerMirroredStrategy` (a cluster described by TF_CONFIG, or built here from a host list).
* `is_chief` / `worker_info`: who writes exports, logs and backups (the chief; BUILD.md,
  "Multi-worker training").
* `distribute_training_data`: every worker reads and decodes only its slice of each global batch,
  so the replicas of all workers together hold exactly the batch one machine would draw; the
  models gather it back for mining (`models.gather_global_batch`).
* `embed_files`: embeddings of a list of images, computed in shards over every replica of every
  worker and gathered, in order, on all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pddm_tf import progress
from pddm_tf.data import ImageFiles, read_image

STRATEGIES = ("default", "mirrored", "multi_worker")
_COMMUNICATION = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                  "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                  "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}


def cluster_config(worker_hosts: list[str], task_index: int) -> dict:
    """The TF_CONFIG of worker `task_index` of a cluster of `worker_hosts` ("host:port" each)."""
    if not worker_hosts:
        raise ValueError("worker_hosts is empty: give one host:port per worker")
    for host in worker_hosts:
        if not host.rpartition(":")[2].isdigit():
            raise ValueError(f"worker host {host!r} is not host:port")
    if not 0 <= task_index < len(worker_hosts):
        raise ValueError(f"task_index {task_index} is not in [0, {len(worker_hosts)}) for {len(worker_hosts)} workers")
    return {"cluster": {"worker": list(worker_hosts)}, "task": {"type": "worker", "index": task_index}}


def make_strategy(name: str = "default", worker_hosts: list[str] | None = None, task_index: int | None = None,
                  communication: str = "auto") -> tf.distribute.Strategy:
    """A distribution strategy by name.

    Args:
      name: "default" (no distribution), "mirrored" (all local devices, one process) or
        "multi_worker" (`tf.distribute.MultiWorkerMirroredStrategy`: every local device of every
        worker, synchronous all-reduce; the same code runs in every worker process).
      worker_hosts, task_index: multi_worker only: the cluster ("host:port" per worker, the same
        list in every worker) and this worker's position in it; they set TF_CONFIG. Without them
        TF_CONFIG must already be set (e.g. by a scheduler).
      communication: multi_worker collectives: "auto", "ring" (gRPC, CPUs) or "nccl" (GPUs).

    Must be called before any other TensorFlow operation when multi_worker (TensorFlow's rule).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if communication not in _COMMUNICATION:
        raise ValueError(f"unknown communication {communication!r}; expected one of {sorted(_COMMUNICATION)}")
    if worker_hosts:
        os.environ["TF_CONFIG"] = json.dumps(cluster_config(list(worker_hosts), int(task_index or 0)))
    elif "TF_CONFIG" not in os.environ:
        raise ValueError("the multi_worker strategy needs a cluster: set TF_CONFIG, or pass worker_hosts and "
                         "task_index (pddm-tf train --worker_hosts=h0:p0,h1:p1 --task_index=i)")
    else:
        _check_tf_config(os.environ["TF_CONFIG"])
    options = tf.distribute.experimental.CommunicationOptions(implementation=_COMMUNICATION[communication])
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def worker_info(strategy: tf.distribute.Strategy | None = None) -> tuple[int, int]:
    """(index of this worker, number of workers) of `strategy` (default: the current one)."""
    spec, task_type, task_id = _cluster(strategy)
    workers = list(spec.get("chief", [])) + list(spec.get("worker", []))
    if not workers or task_type is None:
        return 0, 1
    offset = len(spec.get("chief", [])) if task_type == "worker" else 0
    return offset + int(task_id or 0), len(workers)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's outputs: always true on one machine; worker 0 (or the
    "chief" task, when the cluster names one) under a multi-worker strategy."""
    return worker_info(strategy)[0] == 0


def distribute_training_data(strategy: tf.distribute.Strategy, build: Callable[[tuple[int, int]], tf.data.Dataset],
                             ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """The training batches for `model.fit` under `strategy`.

    `build(shard)` must return the batches' `shard` = (i, n) slice: the i-th of n equal row ranges
    of every global batch (`data.class_balanced_dataset(..., shard=)` and
    `models.cluster_balanced_dataset(..., shard=)`). On one worker this is `build((0, 1))`,
    which Keras splits over the local replicas. With several workers, worker i builds slice i and
    cuts it into one batch per local replica, so replica r of the cluster holds rows
    r*B/R .. (r+1)*B/R - 1 of global batch B, as on one machine with R devices: training matches
    one machine with the same global batch, and each worker reads only its own images.
    """
    _, workers = worker_info(strategy)
    if workers == 1:
        return build((0, 1))

    def worker_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = build((context.input_pipeline_id, context.num_input_pipelines))
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        if local_replicas == 1:
            return dataset
        rows = dataset.element_spec[0].shape[0]
        if rows % local_replicas:
            raise ValueError(f"a worker's {rows} rows per batch do not split over its {local_replicas} replicas")
        return dataset.rebatch(rows // local_replicas)

    return strategy.distribute_datasets_from_function(worker_batches)


def embed_files(network: keras.Model, files: ImageFiles, image_size: int, channels: int, batch_size: int = 256,
                transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None) -> np.ndarray:
    """`network(images)` for every image of `files`, in order: [N, ...] numpy, on every worker.

    Under the strategy `network` was created in (`network.distribute_strategy`), the images are cut
    into chunks of ceil(batch_size / R) rows dealt round-robin to the R replicas of all workers;
    each worker reads and decodes only its replicas' chunks, and every step's outputs are gathered
    across all replicas (`Strategy.gather`), so each worker ends with the same full array. The tail
    is padded with copies of the last image (dropped again), so that every replica runs the same
    number of steps, as collectives require. With one replica this is `network.predict`.

    Args:
      network: images [n, s, s, c] -> outputs [n, ...] (an embedding model, a backbone).
      files: the images.
      image_size, channels: decoding, as `data.evaluation_dataset`.
      batch_size: images per step, over all replicas.
      transform: as `data.evaluation_dataset` (e.g. `transforms.eval_transform(s)`), or a plain resize.
    """
    strategy = network.distribute_strategy
    replicas = strategy.num_replicas_in_sync
    count = len(files)
    if count == 0:
        raise ValueError("no images to embed")
    paths = tf.constant(files.paths)
    rotations = tf.constant(files.rotations)

    def load(row: tf.Tensor) -> tf.Tensor:
        row = tf.minimum(row, count - 1)  # the padding repeats the last image
        return read_image(paths[row], image_size, channels, rotations[row], transform=transform)

    if replicas == 1:
        images = tf.data.Dataset.range(count).map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
        return network.predict(images.prefetch(tf.data.AUTOTUNE), verbose=progress.keras_verbose())

    chunk = -(-batch_size // replicas)
    steps = -(-count // (chunk * replicas))

    def replica_chunks(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        mine = tf.data.Dataset.range(steps * replicas).filter(
            lambda c: (c % replicas) // local == context.input_pipeline_id)
        rows = mine.flat_map(lambda c: tf.data.Dataset.range(c * chunk, (c + 1) * chunk))
        return rows.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(chunk).prefetch(tf.data.AUTOTUNE)

    batches = strategy.distribute_datasets_from_function(replica_chunks)

    @tf.function
    def step(images: tf.Tensor) -> tf.Tensor:
        outputs = strategy.run(lambda x: network(x, training=False), args=(images,))
        return strategy.gather(outputs, axis=0)  # replica order = row order

    outputs = [step(images).numpy() for images in progress.bar(batches, total=steps, desc="embedding", unit="step")]
    return np.concatenate(outputs)[:count]


def _cluster(strategy: tf.distribute.Strategy | None) -> tuple[dict, str | None, int | None]:
    """(cluster spec dict, task type, task id) of a multi-worker strategy; ({}, None, None) otherwise."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, None
    return resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id


def _check_tf_config(text: str) -> None:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r}") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError(f"TF_CONFIG needs 'cluster' and 'task' entries, got {text!r}")
