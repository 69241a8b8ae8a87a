"""What a user sees in the MLflow UI: a headless screenshot of a project's runs list, filtered,
with metric columns, grouped by a param (the view docs/comparing.md shows for a sweep).

    uv sync --locked --group ray --group jax --group ui     # Playwright; the browser is the system's
    python -m benchmarks.ui --project PATH --filter "attributes.run_name = 'baseline'" \
        --column test_accuracy --group-by train.baseline.learning_rate \
        --out docs/images/sweep-grouped.png

It serves the project's store (`mlflow server`: the UI `mlflow ui` serves) on a free
127.0.0.1 port and clicks what a user clicks (the controls are found by their labels, so a
new MLflow release that renames one fails here, loudly). Chromium: `apt-get install
chromium` (or --browser PATH).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness.servers import MlflowServer

SEARCH_PLACEHOLDER = 'metrics.rmse < 1 and params.model = "tree"'  # MLflow's runs search box


def pick(page, button: str, text: str) -> None:
    """Open a toolbar dropdown, type into its search box, click the entry named `text`."""
    page.get_by_role("button", name=button).click()
    page.wait_for_timeout(800)
    page.keyboard.type(text)
    page.wait_for_timeout(1200)
    page.get_by_text(text, exact=True).first.click()
    page.wait_for_timeout(800)
    page.keyboard.press("Escape")


def screenshot(url: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-quic"]  # root in a container
        browser = p.chromium.launch(executable_path=args.browser, args=flags)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(f"{url}/#/experiments/{args.experiment}?workflowType=machine_learning")
        page.wait_for_timeout(6000)
        if page.get_by_role("button", name="Close").count():  # the assistant's side panel
            page.get_by_role("button", name="Close").first.click()
        if args.filter:
            search = page.get_by_placeholder(SEARCH_PLACEHOLDER)
            search.fill(args.filter)
            search.press("Enter")
            page.wait_for_timeout(2500)
        for column in args.column:
            pick(page, "Columns", column)
        if args.group_by:
            pick(page, "Group by", args.group_by)
        page.wait_for_timeout(2500)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ui", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--project", type=Path, required=True, help="a project with runs")
    parser.add_argument("--experiment", default="1", help="the MLflow experiment id")
    parser.add_argument("--filter", default="", help="an MLflow search filter")
    parser.add_argument("--column", action="append", default=[], help="a metric column to show")
    parser.add_argument("--group-by", default="", help="a param to group the runs by")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=560)
    args = parser.parse_args()
    store = f"sqlite:///{args.project.resolve() / 'mlflow.db'}"  # what `mlflow ui` there reads
    with tempfile.TemporaryDirectory() as work:  # the server's log, not in the project
        server = MlflowServer(Path(work), store)
        try:
            server.wait_healthy()
            screenshot(server.url, args)
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
