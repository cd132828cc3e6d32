"""Installation of pddm_tf. `pip install .` for use, `pip install -e ".[test]"` for development."""

import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent


def _package_data() -> list[str]:
    # The embedded Omniglot images (and their MIT licence) ship inside the package.
    root = _HERE / "pddm_tf"
    return [str(p.relative_to(root)) for p in (root / "_data").rglob("*") if p.is_file()]


setup(
    name="pddm_tf",
    version="0.1.0",
    description="Deep metric learning for Keras 3: PDDM hard-quadruplet embedding, HDML, Divide-and-Conquer",
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pddm_tf", "pddm_tf.*"]),
    package_data={"pddm_tf": _package_data()},
    install_requires=[
        "tensorflow>=2.16",
        # pddm_tf._compat relies on private Keras internals, checked against 3.15 (tests/test_compat.py).
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "scikit-learn>=1.3",
        "absl-py>=1.4",
        # Divide-and-Conquer's Hungarian re-matching of clusters (linear_sum_assignment).
        "scipy>=1.10",
        # tensorflow-datasets' download_and_prepare (manual Cars196 / ImageNet files) needs it, but does not declare it.
        "importlib_resources>=5",
        # Progress bars of the long steps (pddm_tf.progress); tensorflow-datasets depends on it too.
        "tqdm>=4.58",
    ],
    extras_require={
        # tensorflow-serving-api: the gRPC PredictRequest of examples/serve_client.py (tests/test_serving.py).
        # pymilvus, milvus-lite: tests/test_milvus.py runs the real Milvus Lite engine; faiss-cpu: the approximate
        # Index backends (tests/test_ann_index.py).
        "test": ["pytest>=7", "pytest-xdist>=3", "pillow>=10", "matplotlib>=3.7", "tensorflow-serving-api",
                 "faiss-cpu", "pymilvus>=3.0", "milvus-lite>=3.2"],
        "serving": ["tensorflow-serving-api", "requests"],
        # faiss-cpu: the optional exact-search backend, nearest_neighbors(backend="faiss"|"auto"), and the
        # approximate Index backends "hnsw", "ivf_pq" (pddm_tf.evaluation.ann).
        "faiss": ["faiss-cpu"],
        # `pddm-tf index` / `pddm-tf search`, pddm_tf.vectordb: Milvus Lite (a local file) or a Milvus server by URI.
        "milvus": ["pymilvus>=3.0", "milvus-lite>=3.2"],
        # pddm_tf.evaluation.visualize and `pddm-tf evaluate --plots`.
        "plots": ["matplotlib>=3.7"],
        # Viewing the `pddm-tf train --log_dir` logs (writing them needs only TensorFlow).
        "tensorboard": ["tensorboard"],
        "bench": ["matplotlib>=3.7", "faiss-cpu"],
    },
    entry_points={"console_scripts": ["pddm-tf=pddm_tf.cli:run"]},
)
