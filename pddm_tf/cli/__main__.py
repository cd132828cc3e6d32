"""`python -m pddm_tf.cli ARGS` runs `pddm-tf ARGS`."""

from pddm_tf.cli import main

main.run()  # which gives absl's --help this module's place: the CLI's docstring and flags
