"""benchmarks/peer_pytorch.py without torch: its pddm_tf side, the weights it hands the PyTorch
side, and its clean skip. The references here are numpy: the network in PyTorch's layout (NCHW,
OIHW kernels), batch-hard triplet and multi-similarity losses written from their definitions."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("peer_pytorch", ROOT / "benchmarks" / "peer_pytorch.py")
peer_pytorch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_pytorch)

IMAGE_SIZE = 16


def _row(method: str, classes: int = 3, per_class: int = 3, dim: int = 8):
    images, labels = peer_pytorch.fixed_batch(classes, per_class, IMAGE_SIZE, 1)
    model = peer_pytorch.pddm_tf_model(method, classes, dim, IMAGE_SIZE, 1)
    return model, images, labels


def _numpy_network(weights: dict[str, np.ndarray], images: np.ndarray, depth: int = 4) -> np.ndarray:
    """The PyTorch worker's network in train mode, in numpy from PyTorch-layout weights: NHWC images
    -> NCHW, per block a 3x3 cross-correlation with zero padding 1, batch-statistics normalisation
    (biased variance, eps 1e-3), ReLU and 2x2 max pooling; mean over space, Linear, L2 norm."""
    x = images.transpose(0, 3, 1, 2).astype(np.float64)
    for block in range(depth):
        kernel = weights[f"features.{4 * block}.weight"].astype(np.float64)
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
        x = np.einsum("nchwij,ocij->nohw", windows, kernel)
        mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
        gamma = weights[f"features.{4 * block + 1}.weight"][None, :, None, None]
        beta = weights[f"features.{4 * block + 1}.bias"][None, :, None, None]
        x = np.maximum((x - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0.0)
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    out = x.mean(axis=(2, 3)) @ weights["projection.weight"].T.astype(np.float64) + weights["projection.bias"]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _batch_hard(f: np.ndarray, labels: np.ndarray, margin: float = 0.2) -> float:
    d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
    hinges = []
    for a in range(len(f)):
        positives = [d[a, p] for p in range(len(f)) if p != a and labels[p] == labels[a]]
        negatives = [d[a, n] for n in range(len(f)) if labels[n] != labels[a]]
        hinges.append(max(0.0, margin + max(positives) - min(negatives)))
    return float(np.mean(hinges))


def _multi_similarity(f: np.ndarray, labels: np.ndarray, alpha: float = 2.0, beta: float = 50.0,
                      base: float = 0.5, epsilon: float = 0.1) -> float:
    """Wang et al. 2019: pairs mined against the hardest pair of the other kind, then
    1/alpha log(1 + sum_P exp(-alpha (S - base))) + 1/beta log(1 + sum_N exp(beta (S - base))), averaged
    over every anchor (0 for an anchor left without a kept positive or a kept negative)."""
    s = f @ f.T
    per_anchor = []
    for a in range(len(f)):
        pos = [s[a, p] for p in range(len(f)) if p != a and labels[p] == labels[a]]
        neg = [s[a, n] for n in range(len(f)) if labels[n] != labels[a]]
        kept_pos = [x for x in pos if x - epsilon < max(neg)]
        kept_neg = [x for x in neg if x + epsilon > min(pos)]
        if not kept_pos or not kept_neg:
            per_anchor.append(0.0)
            continue
        pull = np.log1p(np.sum(np.exp(-alpha * (np.array(kept_pos) - base)))) / alpha
        push = np.log1p(np.sum(np.exp(beta * (np.array(kept_neg) - base)))) / beta
        per_anchor.append(pull + push)
    return float(np.mean(per_anchor))


def test_torch_layout_weights_reproduce_the_keras_network_in_numpy():
    model, images, _ = _row("triplet_batchhard")
    weights = peer_pytorch.torch_layout_weights(model)
    assert weights["features.0.weight"].shape == (64, 1, 3, 3)
    assert weights["projection.weight"].shape == (8, 64)
    keras_embeddings = model(images, training=True).numpy()
    np.testing.assert_allclose(_numpy_network(weights, images), keras_embeddings, atol=2e-4)


@pytest.mark.parametrize("method, reference", [("triplet_batchhard", _batch_hard),
                                               ("multi_similarity", _multi_similarity)])
def test_first_step_loss_is_the_numpy_loss_of_the_batch(method, reference):
    model, images, labels = _row(method)
    # The first step's loss is that of the initial weights, whose train-mode embeddings the numpy
    # network gives (checked above), so the loss is computed from a forward pass independent of Keras.
    embeddings = _numpy_network(peer_pytorch.torch_layout_weights(model), images)
    expected = reference(embeddings, labels)
    step = peer_pytorch.pddm_tf_step(model, images, labels)
    assert expected > 0.01
    assert step() == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert step() != pytest.approx(expected, rel=1e-6)  # the step trains: the next loss is another one


def test_fixed_batch_is_class_by_class_and_reproducible():
    images, labels = peer_pytorch.fixed_batch(4, 2, IMAGE_SIZE, 1)
    assert images.shape == (8, IMAGE_SIZE, IMAGE_SIZE, 1) and images.dtype == np.float32
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    np.testing.assert_array_equal(images, peer_pytorch.fixed_batch(4, 2, IMAGE_SIZE, 1)[0])
    assert peer_pytorch.parse_config("64x4:128") == (64, 4, 128)


def test_missing_modules_names_exactly_the_unimportable_ones():
    assert peer_pytorch.missing_modules(sys.executable, ("numpy", "no_such_module_pddm_peer")) == [
        "no_such_module_pddm_peer"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
def test_script_skips_cleanly_without_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_pytorch.py")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "torch" in result.stdout
    assert "ms (min-max)" not in result.stdout  # nothing was timed
