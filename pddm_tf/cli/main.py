"""`pddm-tf`: train, evaluate and export embedding models from the command line.

  pddm-tf train [flags]      train on a dataset, print held-out retrieval metrics, export
  pddm-tf evaluate [flags]   evaluate an exported SavedModel on a dataset's held-out classes
  pddm-tf export [flags]     a `.keras` model (train --save_model) -> the next TF Serving version, with an
                             optional `search` gallery (BUILD.md, "Serving with TF Serving")
  pddm-tf --help_methods     every training method, with its flags and --loss_options

`pddm-tf train --epochs=0` evaluates and exports the untrained model: the baseline to compare with.
An interrupted or failed `train` is carried on by running the same command again (README, "When things go wrong").
Exit codes: 0 done, 1 an error while running, 2 a flag refused before any work started, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from absl import app, flags

# Only TensorFlow-free modules at the top: `pddm-tf --help` must not import TensorFlow.
from pddm_tf import progress
from pddm_tf.cli import logs, settings, validation
from pddm_tf.cli.command import COMMANDS
from pddm_tf.options import ConfigError

FLAGS = flags.FLAGS

#: The exit code after Ctrl-C: 128 + SIGINT, as shells report it (usage errors: `validation.EXIT_USAGE`).
EXIT_INTERRUPTED = 130


def _import_plugins() -> None:
    """Imports the --plugins modules, which register their methods, datasets, backends and miners; a module
    that cannot be imported or raises is one line naming it (--verbose adds the traceback)."""
    for name in FLAGS.plugins:
        try:
            importlib.import_module(name)
        except Exception as error:  # a plugin is foreign code: whatever it raises is reported the same way
            if FLAGS.verbose:
                traceback.print_exc()
            kind = "cannot import" if isinstance(error, (ImportError, SyntaxError)) else "failed to import"
            detail = f"{type(error).__name__}: {error}".splitlines()[0]
            raise ConfigError(f"--plugins: {kind} {name!r}: {detail}") from None


def _backup_message(trained_only: bool) -> tuple[str, dict] | None:
    """The `train` run's backup folder and status (`backup_status`), or None without a backup."""
    try:
        config = settings.train_config()
    except ValueError:
        return None
    if not config.run.outputs.backup or config.optimization.epochs == 0:
        return None
    # Reached only after a train run started, when TensorFlow is imported already.
    from pddm_tf.training.fault_tolerance import backup_status
    from pddm_tf.training.run import backup_dir

    try:
        path = backup_dir(config)
    except ValueError:
        return None
    status = backup_status(path) or {}
    if trained_only and not status.get("complete"):
        return None
    return path, status


def _interrupted_message(command: str) -> str:
    """The one line printed on Ctrl-C: how to carry on, from what the backup on disk holds."""
    backup = _backup_message(trained_only=False) if command == "train" else None
    if backup is None:
        return "interrupted"
    path, status = backup
    if status.get("complete"):
        return (f"interrupted; run the same command again to write the outputs (training completed: "
                f"{status['epoch']} epochs backed up in {path})")
    epoch = status.get("epoch", 0) + 1
    return (f"interrupted; run the same command again to resume from epoch {epoch} of {FLAGS.epochs} "
            f"(backed up in {path})")


def build_model(channels: int, num_classes: int, total_steps: int | None = None):
    """The compiled model `pddm-tf train` trains, from the flags (`pddm_tf.training.build_model`)."""
    # The CLI edge's deliberate lazy TensorFlow import: `pddm-tf --help` must not pay for it.
    from pddm_tf.training import run as training_run

    return training_run.build_model(settings.train_config(), channels, num_classes, total_steps)


def _select_cpu_kernels() -> None:
    """Sets TF_ENABLE_ONEDNN_OPTS from --onednn, which only matters before TensorFlow is imported (a
    process that imported it already, e.g. a test calling `main`, keeps its kernels and environment)."""
    if "tensorflow" in sys.modules:
        return
    if FLAGS["onednn"].present:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = str(int(FLAGS.onednn))


def main(argv: list[str]) -> None:
    name = argv[1] if len(argv) == 2 else ""
    try:
        if FLAGS.help_methods:
            settings.print_methods()
            return
        if name not in COMMANDS:
            raise app.UsageError(f"usage: pddm-tf {{{'|'.join(COMMANDS)}}} [--flags]; got {argv[1:]}")
        command = COMMANDS[name]
        if FLAGS.plugins:  # they may import TensorFlow: quietly, with the chosen kernels
            _select_cpu_kernels()
            logs.import_tensorflow(FLAGS.verbosity)
            _import_plugins()
        if command.trains:
            settings.apply_recipe()
        validation.check_flags(name, settings.flag_values())  # before TensorFlow: a refused command returns at once
        if command.needs_tensorflow:
            _select_cpu_kernels()
            logs.import_tensorflow(FLAGS.verbosity)
        progress.set_enabled(None if FLAGS.progress else False)
        command.run()
    except (app.UsageError, ConfigError) as error:
        validation.usage_exit(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        print(f"pddm-tf: {_interrupted_message(name or '')}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        # Bad data or arguments, a full disk, a TensorFlow error (e.g. ResourceExhaustedError while writing):
        # one line, as a user reads it; --verbose adds the traceback. Anything else is a bug: its traceback.
        tensorflow_error = type(error).__module__.startswith("tensorflow")
        if not isinstance(error, (ValueError, OSError)) and not tensorflow_error:
            raise
        if FLAGS.verbose:
            traceback.print_exc()
        text = str(getattr(error, "message", "") or error)
        message = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        if tensorflow_error:
            message = f"{type(error).__name__}: {message}"
        kept = _backup_message(trained_only=True) if name == "train" else None
        if kept is not None:
            message += (f"; the trained model is kept in {kept[0]}: run the same command again to write the "
                        "outputs without training")
        sys.exit(f"pddm-tf: error: {message}")


def _usage() -> str:
    """This module's docstring with one line per registered subcommand (a new command file adds its own)."""
    head, _, rest = __doc__.partition("\n\n")
    _, _, tail = rest.partition("\n\n")
    lines = [f"  pddm-tf {name} [flags]".ljust(29) + command.summary for name, command in COMMANDS.items()]
    lines.append("  pddm-tf --help_methods".ljust(29) + "every training method, with its flags and --loss_options")
    return f"{head}\n\n" + "\n".join(lines) + f"\n\n{tail}"


def run() -> None:
    """Console-script entry point."""
    # absl's --help prints the __main__ module's docstring and the key flags of sys.argv[0]. The
    # console script's __main__ is a generated wrapper without either, so `pddm-tf --help` would
    # list no flag at all: lend it this module's.
    sys.modules["__main__"].__doc__ = _usage()
    for module in (settings.__name__, *(m for m in sys.modules if m.startswith("pddm_tf.cli.commands."))):
        for flag in FLAGS.get_key_flags_for_module(module):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    # One line and exit code 2 for a flag absl cannot parse, as for every other usage error.
    app.run(main, flags_parser=validation.parse_flags)
