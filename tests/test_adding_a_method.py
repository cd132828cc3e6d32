"""docs/adding_a_method.md runs as written: its Python blocks in order (the plugin module, its numpy
check, one training step), then the module they define as a `--plugins` module of `pddm-tf train`
with the page's two commands: one trains, one is refused in one line."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "adding_a_method.md").read_text(encoding="utf-8")
#: Fenced Python blocks as (info string, code); "```python my_methods.py" marks the plugin module's blocks.
BLOCKS = re.findall(r"(?ms)^```python([^\n]*)\n(.*?)^```", PAGE)
#: The page's `pddm-tf` commands.
COMMANDS = [line for block in re.findall(r"(?ms)^```bash\n(.*?)^```", PAGE) for line in block.splitlines()
            if line.startswith("pddm-tf ")]
# Small enough for a test: the command as written, on 16-pixel images, a narrow network and 2 steps.
SMALL = ["--image_size=16", "--backbone_width=8", "--embedding_dim=8", "--epochs=1", "--steps_per_epoch=2",
         "--eval_every=0", "--episodes=5way1shot", "--noprogress"]


def _run(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(REPO)]), TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_the_page_has_its_example():
    assert len(BLOCKS) >= 4
    assert sum("my_methods.py" in info for info, _ in BLOCKS) >= 2
    assert len(COMMANDS) == 2 and "refused" in COMMANDS[1]


@pytest.mark.slow
def test_the_python_blocks_run_in_order(tmp_path):
    script = "\n\n".join(code for _, code in BLOCKS)
    result = _run([sys.executable, "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_the_plugin_trains_from_the_command_line_and_refuses_a_bad_option(tmp_path):
    (tmp_path / "my_methods.py").write_text("\n\n".join(code for info, code in BLOCKS if "my_methods.py" in info))
    trains, refused = (shlex.split(command.split("#")[0]) for command in COMMANDS)
    cli = [sys.executable, "-m", "pddm_tf.cli"]
    result = _run([*cli, *trains[1:], *SMALL, f"--json={tmp_path / 'metrics.json'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "metrics.json").stat().st_size > 0
    result = _run([*cli, *refused[1:], *SMALL], tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "margin" in message[0], result.stderr
