"""Helpers of benchmarks/serving.py: a huge photo, concurrent clients bounded in count and
time, and the peak resident memory of a process tree while they run (with a guard that stops
the server before it exhausts a shared machine)."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image


def huge_photo(path: Path, side: int) -> Path:
    """A smooth side x side JPEG (a baseline one, as cameras write them): 144 megapixels for
    side 12000, a few MB, like a panorama or a phone's full-resolution mode."""
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (side // 200, side // 200, 3), np.uint8))
    small.resize((side, side), Image.BILINEAR).save(path, format="JPEG", quality=85)
    return path


def payload(photo: Path) -> dict:
    return {"dataframe_records": [{"image": base64.b64encode(photo.read_bytes()).decode()}]}


class PeakRss:
    """Samples the summed RSS of `pid` and its descendants every 20 ms while in the block;
    kills the tree (and says so) if it passes `limit_mb`."""

    def __init__(self, pid: int, limit_mb: float):
        self.root, self.limit_mb = psutil.Process(pid), limit_mb
        self.peak_mb, self.killed = 0.0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.02):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree) / 2**20
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, rss)
            if rss > self.limit_mb and not self.killed:
                self.killed = True
                for process in reversed(tree):
                    process.kill()


def load(url: str, payloads: list[dict], clients: int, count: int, seconds: float) -> dict:
    """`clients` threads POST the payloads in turn until `count` requests are sent or
    `seconds` have passed (each request times out at 120 s): OK count, p50, p95."""
    deadline, lock, sent, results = time.monotonic() + seconds, threading.Lock(), [0], []

    def client():
        while True:
            with lock:
                if sent[0] >= count or time.monotonic() > deadline:
                    return
                body, sent[0] = payloads[sent[0] % len(payloads)], sent[0] + 1
            started = time.perf_counter()
            try:
                ok = requests.post(f"{url}/invocations", json=body, timeout=120).ok
            except requests.RequestException:
                ok = False
            results.append((ok, (time.perf_counter() - started) * 1000))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    latencies = sorted(ms for ok, ms in results if ok)
    return {
        "clients": clients,
        "sent": len(results),
        "ok": len(latencies),
        "seconds": round(time.perf_counter() - started, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 0) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)), 0) if latencies else None,
    }
