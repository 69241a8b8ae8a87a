"""How `python -m pipeline` ends (pipeline/cli.py `_exit`): a process that loaded TensorFlow
skips the interpreter's teardown (2-2.5 s a stage) but keeps its exit code, its flushed
output and Python's exit hooks; with a non-daemon thread still running it exits normally.

The child processes stand a bare module in for TensorFlow: `_exit` only asks whether it was
imported, and the real import would cost seconds a test."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
