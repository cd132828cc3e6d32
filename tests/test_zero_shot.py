"""examples/zero_shot_imagenet.py end to end, on mock ImageNet (a fake TFDS, as in test_tfds_loaders.py) and on
the embedded Omniglot data; every reported hit@k is recomputed here with plain loops over the written embeddings."""

import functools
import importlib.util
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags
from sklearn.linear_model import Ridge
from tensorflow_datasets.testing import mocking

_ROOT = pathlib.Path(__file__).resolve().parents[1]
KS = (1, 2, 5, 10)
TINY = ["--image_size=16", "--backbone_width=8", "--embedding_dim=8", "--batch_per_class=2", "--eval_batch_size=128",
        "--epochs=1"]
SEED = 1
# ImageNet classes held out with --unseen_fraction=0.2 and --seed=SEED (pddm_tf.data.tfds_loaders' documented rule).
_HELD_OUT = np.random.default_rng(SEED).permutation(1000)[:200]
_UNSEEN = sorted(int(c) for c in _HELD_OUT[:3])
_SEEN = sorted(int(c) for c in np.setdiff1d(np.arange(1000), _HELD_OUT)[[0, 10, 100, 500]])
# Fake TFDS labels: 4 seen classes x 3 training images, 3 unseen classes x 7 validation images (enough for
# 5-shot prototypes); a seen class in validation and an unseen one in train must be ignored.
_LABELS = {"train": _SEEN * 3 + [_UNSEEN[0]], "validation": _UNSEEN * 7 + [_SEEN[0]]}


def _example_module():
    spec = importlib.util.spec_from_file_location("zero_shot_imagenet", _ROOT / "examples" / "zero_shot_imagenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(argv: list[str]):
    module = _example_module()
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    flag_values(["zero_shot_imagenet", *argv])
    return module.run(flag_values)


def _fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Random imagenet2012 examples with the labels of `_LABELS`, encoded then decoded by TFDS's features."""
    del read_config, shuffle_files
    labels = _LABELS[str(split)]
    features = self.info.features
    examples = list(mocking.RandomFakeGenerator(features, len(labels), constant_dynamic_shape=True, seed=len(labels)))
    for example, label in zip(examples, labels):
        example["label"] = np.int64(label)
    if isinstance(decoders, tfds.decode.PartialDecoding):
        features = decoders.extract_features(features)
        decoders = decoders.decoders
    encoded = [features.encode_example({k: ex[k] for k in features}) for ex in examples]
    signature = tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape, s.tf_dtype), features.get_serialized_info())
    dataset = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=signature)
    return dataset.map(functools.partial(features.decode_example, decoders=decoders))


def _recompute_prototypes(embeddings: np.ndarray, labels: np.ndarray, support: np.ndarray | None) -> dict:
    """hit@k by nearest class mean, one query at a time (support None: leave-one-out over all images)."""
    embeddings = embeddings.astype(np.float64)
    if support is None:
        classes = [c for c in np.unique(labels) if (labels == c).sum() >= 2]
        queries = [i for i in range(len(labels)) if labels[i] in classes]
    else:
        classes = sorted(set(labels[support].tolist()))
        queries = [i for i in range(len(labels)) if labels[i] in classes and i not in set(support.tolist())]
    pool = np.arange(len(labels)) if support is None else np.asarray(support)
    members = {c: pool[labels[pool] == c] for c in classes}
    ranks = []
    for i in queries:
        distances = []
        for c in classes:
            rows = members[c][members[c] != i]  # never the query itself
            distances.append(np.sum((embeddings[i] - embeddings[rows].mean(axis=0)) ** 2))
        truth = classes.index(labels[i])
        order = np.argsort(distances, kind="stable")
        ranks.append(int(np.flatnonzero(order == truth)[0]))
    ranks = np.array(ranks)
    return {**{f"hit@{k}": float(np.mean(ranks < k)) for k in KS}, "queries": len(queries), "classes": len(classes)}


def _check_results(out_dir: pathlib.Path, seed: int, unseen_names: list[str]) -> dict:
    results = json.loads((out_dir / "results.json").read_text())
    arrays = np.load(out_dir / "embeddings.npz")
    embeddings, labels = arrays["unseen_embeddings"], arrays["unseen_labels"]
    assert list(arrays["unseen_class_names"]) == unseen_names
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    for n in ("1", "5"):
        support = arrays[f"support_{n}"]
        # n images of every class with more than n images, the rest are the queries.
        classes, counts = np.unique(labels, return_counts=True)
        assert sorted(labels[support].tolist()) == sorted(np.repeat(classes[counts > int(n)], int(n)).tolist())
        assert results["prototype"][n] == pytest.approx(_recompute_prototypes(embeddings, labels, support), abs=1e-12)
    assert results["prototype"]["all"] == pytest.approx(_recompute_prototypes(embeddings, labels, None), abs=1e-12)
    assert results["unseen_images"] == len(labels)
    return results


@pytest.fixture
def mock_imagenet(tmp_path):
    builder = tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds"))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_path)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path / "tfds"),
                                as_dataset_fn=_fake_as_dataset):
        yield str(tmp_path / "tfds"), builder.info.features["label"].names


def test_mock_imagenet_end_to_end(mock_imagenet, tmp_path):
    data_dir, names = mock_imagenet
    out = tmp_path / "out"
    results = _run(["--dataset=imagenet2012", f"--data_dir={data_dir}", f"--cache_dir={tmp_path / 'cache'}",
                    "--unseen_fraction=0.2", f"--seed={SEED}", "--steps=2", "--batch_classes=4", *TINY,
                    f"--out_dir={out}"])
    checked = _check_results(out, SEED, [names[c] for c in _UNSEEN])
    assert results == checked
    assert (results["seen_classes"], results["unseen_classes"], results["unseen_images"]) == (4, 3, 21)
    assert {n: results["prototype"][n]["queries"] for n in ("1", "5", "all")} == {"1": 18, "5": 6, "all": 21}


def test_omniglot_end_to_end_with_semantic_vectors(tmp_path):
    from pddm_tf import data

    split = data.load_omniglot(test_fraction=0.2, split_by="alphabet", seed=0)
    names = sorted(split.train.class_names + split.test.class_names)
    rng = np.random.default_rng(0)
    vectors = {name: rng.normal(size=6).tolist() for name in names}
    (tmp_path / "vectors.json").write_text(json.dumps(vectors))
    out = tmp_path / "out"
    results = _run(["--dataset=omniglot", "--unseen_fraction=0.2", "--seed=0", "--steps=3", "--batch_classes=8",
                    *TINY, f"--semantic_vectors={tmp_path / 'vectors.json'}", "--semantic_per_class=3",
                    "--ridge_lambda=0.5", "--recipe=pddm_cub", "--backbone=small_convnet", "--weights=none",
                    f"--out_dir={out}"])
    _check_results(out, 0, list(split.test.class_names))
    # The recipe filled the flags not given (method, margins, learning rate) and left the given ones alone.
    assert results["recipe_applied"].get("method") == "pddm_quadruplet" and "dataset" not in results["recipe_applied"]
    assert results["image_size"] == 16 and results["embedding_dim"] == 8 and results["epochs"] == 1
    # Semantic map: scikit-learn's ridge (unpenalised intercept) and cosine ranking, recomputed here.
    arrays = np.load(out / "embeddings.npz")
    seen_names, unseen_names = list(arrays["seen_class_names"]), list(arrays["unseen_class_names"])
    targets = np.array([vectors[seen_names[c]] for c in arrays["seen_labels"]])
    assert np.bincount(arrays["seen_labels"]).max() == 3
    ridge = Ridge(alpha=0.5, fit_intercept=True, solver="cholesky").fit(arrays["seen_embeddings"].astype(np.float64),
                                                                        targets)
    mapped = ridge.predict(arrays["unseen_embeddings"].astype(np.float64))
    class_vectors = np.array([vectors[name] for name in unseen_names])
    cosine = (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) @ (
        class_vectors / np.linalg.norm(class_vectors, axis=1, keepdims=True)).T
    rank = np.array([np.sum(row > row[t]) for row, t in zip(cosine, arrays["unseen_labels"])])
    for k in KS:
        assert results["semantic"][f"hit@{k}"] == pytest.approx(np.mean(rank < k), abs=1e-12)
