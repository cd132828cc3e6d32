"""Progress bars for the long steps outside `fit`: checking a folder's images, extracting a TFDS split,
embedding a gallery or a test set, k-means, exact kNN.

Bars are tqdm's (a dependency of tensorflow-datasets), written to stderr, and only drawn when stderr
is a terminal: logs and pipes stay clean. `set_enabled(False)` (`pddm-tf --noprogress`) turns them
off, `set_enabled(True)` forces them on. A bar appears only after `DELAY` seconds, so quick steps
stay silent, and it is erased when the step ends.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

#: Seconds a step runs before its bar is drawn.
DELAY = 1.0
_enabled: bool | None = None  # None: on when stderr is a terminal


def set_enabled(enabled: bool | None) -> None:
    """True/False forces the bars on/off; None (the default) draws them when stderr is a terminal."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether bars are drawn now."""
    if _enabled is not None:
        return _enabled
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str | None = None,
        unit: str = "it") -> tqdm:
    """A tqdm bar over `iterable` (or, without one, to `update` by hand), drawn if `enabled()`."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), leave=False, delay=DELAY,
                file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """A one-step bar (description and elapsed time) for work that reports no progress, e.g. k-means."""
    with bar(total=1, desc=desc) as progress:
        yield
        progress.update(1)


def keras_verbose() -> int:
    """The `verbose` of `model.predict`: 1 (Keras' progress bar, on stdout) when bars are on and stdout
    is a terminal too, else 0."""
    return 1 if enabled() and sys.stdout.isatty() else 0
