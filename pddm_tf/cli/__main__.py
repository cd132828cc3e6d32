"""`python -m pddm_tf.cli ARGS` runs `pddm-tf ARGS`."""

from absl import flags

from pddm_tf.cli import main

# absl's --help prints the __main__ module's docstring and lists that module's key flags: the CLI's.
__doc__ = main.__doc__
flags.adopt_module_key_flags(main)
main.run()
