"""The PyTorch side of `benchmarks/peer_pytorch.py`: one worker process, driven over stdin/stdout.

It imports only torch, pytorch-metric-learning and numpy (never TensorFlow), so that the thread
settings it is started with (OMP_WAIT_POLICY must be in the environment before torch is imported)
are the only thing that differs between two workers. The driver starts it as
`python peer_pytorch_worker.py` and speaks JSON lines:

  -> {"npz": PATH, "rows": [{"name", "loss", "dim"}...], "warmup_steps": N}
  <- {"first_loss": {name: loss of the first step}, "threads": ..., "torch": ..., "pml": ...}
  -> {"row": NAME, "steps": N}            <- {"ms": ms per step, "loss": last loss}
  -> {"quit": true}

Each row is the network of `pddm_tf.backbones.small_convnet` + `EmbeddingHead` rebuilt in PyTorch
(Conv3x3(64, no bias) -> BatchNorm(eps 1e-3, momentum 0.01, Keras' defaults) -> ReLU -> MaxPool2,
four times, global average pooling, Linear to d), loaded with the Keras model's initial weights
from the driver's .npz (arrays in PyTorch's layout, keyed by this module's state_dict names), and
trained on the driver's fixed batch with Adam(1e-4, eps 1e-7, Keras' epsilon) and the loss of
pytorch-metric-learning that matches the pddm_tf method:
  * "triplet_batchhard": `BatchHardMiner` + `TripletMarginLoss(margin=0.2)` with a `MeanReducer`
    (pddm_tf averages over every mined triplet, zero hinges included; PML's default reducer would
    average over the non-zero ones only);
  * "multi_similarity": `MultiSimilarityMiner(epsilon=0.1)` + `MultiSimilarityLoss(2, 50, 0.5)`.
PML's distances L2-normalise the embeddings themselves (its default), which is what pddm_tf's
head does before its loss.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_metric_learning
import torch
from pytorch_metric_learning import losses, miners, reducers


class SmallConvnet(torch.nn.Module):
    """`pddm_tf.backbones.small_convnet(width=64, depth=4)` + a Linear projection to d, NCHW input."""

    def __init__(self, channels: int, dim: int, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        blocks: list[torch.nn.Module] = []
        for block in range(depth):
            blocks += [torch.nn.Conv2d(channels if block == 0 else width, width, 3, padding=1, bias=False),
                       torch.nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), torch.nn.ReLU(inplace=True),
                       torch.nn.MaxPool2d(2)]
        self.features = torch.nn.Sequential(*blocks)
        self.projection = torch.nn.Linear(width, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(images).mean(dim=(2, 3)))


def _loss_and_miner(name: str) -> tuple[Callable[..., torch.Tensor], Callable[..., Any]]:
    if name == "triplet_batchhard":
        return losses.TripletMarginLoss(margin=0.2, reducer=reducers.MeanReducer()), miners.BatchHardMiner()
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    raise ValueError(f"no PyTorch counterpart for the loss {name!r}")


def _row(arrays: Any, name: str, loss_name: str, dim: int) -> Callable[[], float]:
    images = torch.from_numpy(np.ascontiguousarray(arrays[f"{name}/images"].transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(arrays[f"{name}/labels"].astype(np.int64))
    model = SmallConvnet(images.shape[1], dim)
    state = model.state_dict()
    prefix = f"{name}/weights/"
    loaded = {key[len(prefix):]: torch.from_numpy(arrays[key]) for key in arrays.files if key.startswith(prefix)}
    if set(loaded) != {key for key in state if not key.endswith("num_batches_tracked")}:
        raise ValueError(f"{name}: the driver's weights do not match the network: {sorted(loaded)}")
    state.update(loaded)
    model.load_state_dict(state)
    model.train()
    loss_fn, miner = _loss_and_miner(loss_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        embeddings = model(images)
        loss = loss_fn(embeddings, labels, miner(embeddings, labels))
        loss.backward()
        optimizer.step()
        return float(loss.item())  # a host sync, as pddm_tf's train_on_batch returns its loss

    return step


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    setup = json.loads(sys.stdin.readline())
    arrays = np.load(setup["npz"])
    steps = {row["name"]: _row(arrays, row["name"], row["loss"], int(row["dim"])) for row in setup["rows"]}
    first = {name: step() for name, step in steps.items()}
    for step in steps.values():
        for _ in range(int(setup["warmup_steps"])):
            step()
    _reply({"first_loss": first, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "pml": pytorch_metric_learning.__version__})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            return
        step = steps[command["row"]]
        start = time.perf_counter()
        for _ in range(int(command["steps"])):
            loss = step()
        _reply({"ms": (time.perf_counter() - start) / int(command["steps"]) * 1000, "loss": loss})


if __name__ == "__main__":
    main()
