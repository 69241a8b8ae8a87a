"""What the benchmark scripts share: a command timed to its end, a project copy on the real
photos, the matmul limit of this machine, and the one writer of their reports (markdown
tables, the figures as JSON beside them)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from harness.project import ROOT, command_env, dotted_patch, make_project
from harness.timeline import busy_cpu_seconds

DEFAULT_ARCHIVE = ROOT.parent / "shared/data/dogs-vs-cats-6000.zip"
ONLY_LITE0 = {"pretrained": {"bases": {"vgg16": None}}}  # VGG16's ImageNet weights are online


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def parser(module: str, doc: str, report: str) -> argparse.ArgumentParser:
    """A script's parser, with the options every script has: --archive and --out."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="the photos")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / report, help="report")
    return parser


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; None is an empty cell."""
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: Path, figures: dict, *parts: str) -> None:
    """The report (its parts, a blank line apart) to `out` and stdout, the figures as JSON."""
    text = "\n\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(text)


def command(args: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run a command to the end: wall and CPU seconds, peak RSS of its process tree (wait4
    covers the reaped descendants), the share of the cores other processes used meanwhile,
    and its output. Exits with the output's tail if it fails."""
    started, everyone = time.perf_counter(), busy_cpu_seconds()
    process = subprocess.Popen(
        args, cwd=cwd, env=command_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall, cpu = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output[-3000:]}")
    others = busy_cpu_seconds() - everyone - cpu
    return {
        "seconds": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "neighbours_share": round(max(0.0, others / wall / os.cpu_count()), 2),
        "output": output,
    }


def archive_project(work: Path, archive: Path, assignments: list[str]) -> Path:
    """A fresh project copy on `archive` with only the offline conv base, then `-S` params."""
    data = {"data": {"source": str(archive.resolve())}}
    return make_project(work / "project", data, ONLY_LITE0, dotted_patch(*assignments))


def matmul_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """The FLOP rate a large matmul reaches: the practical limit of this CPU for `dtype`."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    tf.matmul(a, b).numpy()  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def matmul_limit() -> dict:
    """matmul_gflops in float32 and bfloat16, in a process of its own: TensorFlow loaded here
    would weigh on every command this process starts afterwards."""
    code = (
        "import json; from benchmarks.common import matmul_gflops; "
        "print(json.dumps({d: round(matmul_gflops(d), 1) for d in ('float32', 'bfloat16')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])
