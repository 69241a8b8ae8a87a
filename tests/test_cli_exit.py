"""How `python -m pipeline` ends (pipeline/cli.py `_exit`): a process that loaded TensorFlow
skips the interpreter's teardown (seconds a stage: docs/performance.md) but keeps its exit
code, its flushed output and Python's exit hooks; with a non-daemon thread still running it
exits normally. A bad argument or bad params end it with one line and status 1 before any
work: before TensorFlow loads, before `check` lets DVC remove anything.

The child processes stand a bare module in for TensorFlow: `_exit` only asks whether it was
imported, and the real import would cost seconds a test."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml

from tests.helpers.project import ROOT

CHILD = """
import atexit, sys, threading, time, types
from pipeline import cli

class Teardown:  # says so when the interpreter's teardown collects it
    def __del__(self):
        sys.stdout.write("teardown\\n")
        sys.stdout.flush()

kept = Teardown()
atexit.register(lambda: print("exit hook"))
sys.modules["tensorflow"] = types.ModuleType("tensorflow")
if "--thread" in sys.argv:
    threading.Thread(target=time.sleep, args=(0.5,)).start()  # non-daemon
print("output", end="")  # buffered, no newline: only a flush writes it
cli._exit(sys.argv[1] if sys.argv[1].isalpha() else int(sys.argv[1]))
"""


def child(*args: str):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_tensorflow_process_exits_with_its_code_output_and_hooks_but_no_teardown():
    done = child("3")
    assert done.returncode == 3
    assert done.stdout == "outputexit hook\n"  # flushed, hooked, not torn down


def test_a_message_exit_is_one_line_on_stderr_and_status_1():
    done = child("wrong")
    assert (done.returncode, done.stderr) == (1, "wrong\n")


def test_a_running_non_daemon_thread_gets_the_normal_exit():
    done = child("0", "--thread")
    assert done.returncode == 0
    assert done.stdout.startswith("output")
    assert "teardown" in done.stdout  # the interpreter's own exit: it waited for the thread


def test_an_unknown_conv_base_is_named_before_tensorflow_loads():
    script = (
        "import sys\nfrom pipeline.cli import app\n"
        "try:\n    app(['train', 'features', '--base', 'resnet50'])\n"
        "except SystemExit as exit:\n    print(exit.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert result.stderr.strip() == (
        "error: conv base 'resnet50' is not in pretrained.bases (vgg16, efficientnet_lite0)"
    )


def test_check_validates_params_before_dvc_removes_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert CliRunner().invoke(app, ["check"]).output == "params.yaml: valid\n"
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["split"]["trian"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 1
    assert "unknown key 'split.trian': did you mean 'train'?" in result.output
