"""Quiet TensorFlow start-up for the command line, importable without TensorFlow.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` (0 = all, 1 = no INFO, 2 = no WARNING, 3 = no ERROR)
when it is imported, but some of its libraries log through absl before they honour it: on a
machine without a GPU, `import tensorflow` prints the "All log messages before
absl::InitializeLog() ..." banner, "Could not find cuda drivers" and CPU-feature INFO lines,
and the first device query prints "E0000 ... failed call to cuInit", which looks like an error
but only says that there is no GPU. `import_tensorflow` imports TensorFlow and Keras with the
process's stderr (file descriptor 2, where that C++ code writes) captured, then replays what
was captured minus the lines that the log level hides, so the level holds for those lines too.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: The C++ log level of the command line unless the user set TF_CPP_MIN_LOG_LEVEL: errors only.
DEFAULT_CPP_LEVEL = 2
# An absl/TSL log line: severity letter, MMDD, time, thread, file:line].
_RECORD = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Second line of cpu_feature_guard's INFO record.
_CONTINUATION = "To enable the following instructions:"


def cpp_log_level(verbosity: int) -> int:
    """TF_CPP_MIN_LOG_LEVEL in effect: the user's, or from absl's --verbosity (1 and up: everything)."""
    user = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if user is not None and user.strip().isdigit():
        return int(user)
    return 0 if verbosity >= 1 else DEFAULT_CPP_LEVEL


def keep_line(line: str, level: int, has_gpu_device: bool, previous_dropped: bool = False) -> bool:
    """Whether a line TensorFlow printed at start-up is shown under C++ log level `level`.

    Drops absl records below `level`, the pre-initialisation banner (level >= 1), the second line
    of a dropped CPU-feature record, and (level >= 1) the cuInit failure on a machine without NVIDIA
    device files, where it means only "no GPU". Anything else (Python warnings, tracebacks) is kept.
    """
    if level <= 0:
        return True
    if line.startswith(_BANNER):
        return False
    if previous_dropped and line.startswith(_CONTINUATION):
        return False
    record = _RECORD.match(line)
    if record is None:
        return True
    if _SEVERITY[record.group(1)] < level:
        return False
    return has_gpu_device or "failed call to cuInit" not in line


def has_nvidia_device() -> bool:
    """Whether the machine exposes an NVIDIA device file (/dev/nvidia0, ...)."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def filter_lines(text: str, level: int, has_gpu_device: bool) -> str:
    """`text` without the lines `keep_line` drops."""
    kept, dropped = [], False
    for line in text.splitlines(keepends=True):
        keep = keep_line(line, level, has_gpu_device, dropped)
        dropped = not keep
        if keep:
            kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirects file descriptor 2 into a temporary file; yields a list that receives the text."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            out.append(capture.read().decode("utf-8", errors="replace"))


def import_tensorflow(verbosity: int = 0) -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL (unless the user did) and imports TensorFlow and Keras quietly.

    With `verbosity` >= 1 (absl's `-v 1`) everything TensorFlow prints is shown. Listing the
    physical devices runs the GPU probe here; it does not initialise the runtime, so a
    multi-worker strategy can still be created afterwards. Does nothing if TensorFlow is already
    imported (its start-up lines are then long printed).

    Below `verbosity` 1, TensorFlow's Python logging (the "tensorflow" logger, and "absl", which
    TensorFlow's SavedModel code logs to) also shows warnings and errors only: its INFO lines (e.g.
    "Writing fingerprint to ..." at every export) say nothing a user acts on. This library's own
    loggers ("pddm_tf.*") keep the level of --verbosity.
    """
    if "tensorflow" not in sys.modules:
        _import_tensorflow_quietly(verbosity)
    # A filter, not a level: TensorFlow's SavedModel code resets absl's level at every save.
    for name in ("tensorflow", "absl"):
        logger = logging.getLogger(name)
        logger.removeFilter(_WARNINGS_ONLY)
        if verbosity < 1:
            logger.addFilter(_WARNINGS_ONLY)


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


_WARNINGS_ONLY = _warnings_only


def _import_tensorflow_quietly(verbosity: int) -> None:
    """Imports TensorFlow and Keras with fd 2 captured, then replays what the C++ log level keeps."""
    level = cpp_log_level(verbosity)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(level))
    with _captured_stderr() as captured:
        # The CLI edge's deliberate lazy TensorFlow import: `pddm-tf --help` and refused flags never pay for it.
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()
    text = filter_lines(captured[0], level, has_nvidia_device())
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
