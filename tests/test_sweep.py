"""`python -m pipeline sweep` (pipeline/sweep/).

Fast, in this process: the seeds, the plan and what counts as done, and every refusal of a
bad Ray setup, on tiny git repos. Slow, with real processes, all on 127.0.0.1: a real Ray
cluster (`ray start --head`), a bare git repo as the remote, a local-directory DVC remote and
an `mlflow server`; a 2-seed sweep of a 1-epoch baseline with one task killed mid-way, the
sweep run again (it skips the finished one, reruns the killed one), then `dvc exp pull` and
`compare` in a fresh clone of the user. Every Ray process must listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.sweep import checks, grid, plan, report
from pipeline.sweep import run as sweep_run
from tests.helpers.project import ROOT, command_env, make_project, run
from tests.helpers.servers import RAY_ENV, MlflowServer, RayHead, free_port

# --- fast: the plan --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("1-5", [1, 2, 3, 4, 5]), ("1,3", [1, 3]), ("1-3,7", [1, 2, 3, 7]), ("3, 1,3", [1, 3])],
)
def test_seeds_are_ranges_and_lists(text, seeds):
    assert plan.parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "message"),
    [("5-1", "runs backwards"), ("1-", "not a seed or a range"), ("a", "not a seed"), ("", "")],
)
def test_bad_seeds_are_refused(text, message):
    with pytest.raises(PipelineError, match=f"--seeds {text}: .*{message}"):
        plan.parse_seeds(text)


@pytest.fixture(scope="module")
def params():
    from pipeline.core.params import load_params

    return load_params(ROOT / "params.yaml"), yaml.safe_load((ROOT / "params.yaml").read_text())


def test_plan_is_one_experiment_per_model_and_seed(params):
    typed, raw = params
    every = plan.plan(typed, raw, [], [1, 2], [()])
    assert len(every) == 2 * 8  # 2 scratch models + 3 pretrained ones on 2 bases
    assert every[0].stage == "baseline" and every[0].seed == 1
    chosen = plan.plan(
        typed, raw, ["features-efficientnet_lite0"], [4], [("train.features.epochs=5",)]
    )
    (experiment,) = chosen
    assert experiment.stage == "features@efficientnet_lite0"
    assert re.fullmatch(r"sweep-[0-9a-f]{8}-features-efficientnet_lite0-s4", experiment.name)
    assert experiment.set_params() == ["-S", "train.seed=4", "-S", "train.features.epochs=5"]
    with pytest.raises(PipelineError, match="--model nope: unknown model; one of baseline"):
        plan.plan(typed, raw, ["nope"], [1], [()])


def test_config_names_what_is_trained_not_how_the_sweep_runs(params):
    _, raw = params
    digest = plan.config_digest(raw, ())
    assert plan.config_digest({**raw, "sweep": {"jobs": 4}}, ()) == digest
    assert plan.config_digest(raw, ("train.baseline.epochs=2",)) != digest
    changed = {**raw, "train": {**raw["train"], "seed": 7}}
    assert plan.config_digest(changed, ()) != digest


def test_done_needs_both_the_experiment_and_a_finished_run(params):
    typed, raw = params
    one, two, three = plan.plan(typed, raw, ["baseline"], [1, 2, 3], [()])
    exps = {one.name, two.name}  # three: never ran
    finished = {one.name, three.name}  # two: its run was killed
    done, todo = plan.split_done([one, two, three], exps, finished)
    assert done == [one] and todo == [two, three]
    assert plan.exp_name_of_ref(f"refs/exps/ab/cdef0123/{one.name}") == one.name


# --- fast: the grid -------------------------------------------------------------------

GRID = ["train.baseline.learning_rate=0.001,0.002", "train.baseline.epochs=2"]


def test_a_grid_is_every_combination_of_hydras_sweep_syntax():
    cells = grid.expand(
        ["train.augmented.dropout=0.3,0.5", "train.augmented.learning_rate=choice(1e-4,1e-3)"]
        + ["train.augmented.epochs=range(2,7,2)", "~pretrained.bases.vgg16"]
    )
    assert len(cells) == 2 * 2 * 3
    assert cells[0] == (
        "train.augmented.dropout=0.3",
        "train.augmented.learning_rate=0.0001",
        "train.augmented.epochs=2",
        "~pretrained.bases.vgg16",  # as given: a plain sweep with it names the same experiments
    )
    assert cells[-1][:3] == (
        "train.augmented.dropout=0.5",
        "train.augmented.learning_rate=0.001",
        "train.augmented.epochs=6",
    )
    assert grid.varying(cells) == [
        "train.augmented.dropout",
        "train.augmented.learning_rate",
        "train.augmented.epochs",
    ]
    floats = grid.expand(["train.augmented.dropout=range(0.1,0.35,0.1)"])
    assert floats == [(f"train.augmented.dropout={v}",) for v in ("0.1", "0.2", "0.3")]
    assert grid.expand([]) == [()]


def test_grid_names_are_stable_and_shared_with_a_plain_sweep(params):
    typed, raw = params
    experiments = plan.plan(typed, raw, ["baseline"], [1, 2], grid.expand(GRID))
    assert [(e.overrides[0][-5:], e.seed) for e in experiments] == [
        ("0.001", 1), ("0.001", 2), ("0.002", 1), ("0.002", 2),
    ]  # fmt: skip
    assert len({e.name for e in experiments}) == 4
    assert len({e.config for e in experiments}) == 2  # one per configuration, for every seed
    again = plan.plan(typed, raw, ["baseline"], [1, 2], grid.expand(GRID))
    assert [e.name for e in again] == [e.name for e in experiments]
    # The same configuration given as plain -S (in another order) is the same experiment.
    (alone,) = plan.plan(
        typed,
        raw,
        ["baseline"],
        [2],
        [("train.baseline.epochs=2", "train.baseline.learning_rate=0.002")],
    )
    assert alone.name == experiments[3].name
    assert experiments[0].set_params() == [
        "-S", "train.seed=1", "-S", "train.baseline.learning_rate=0.001",
        "-S", "train.baseline.epochs=2",
    ]  # fmt: skip
    digest = plan.sweep_digest(raw, GRID, ["baseline"])
    assert plan.sweep_digest(raw, GRID, ["baseline"]) == digest
    assert plan.sweep_digest(raw, GRID[:1], ["baseline"]) != digest


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["train.baseline.learning_rate=interval(1e-4,1e-2)"], "interval\\(\\) is continuous"),
        (["train.seed=1,2"], "the sweep sets the seed; use --seeds"),
        (["train.baseline.learning_rate=choice("], "-S train.baseline.learning_rate=choice\\(: "),
        (["train.baseline.epochs=range(1,2000)"], "1999 configurations, more than 1000"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line(given, message):
    with pytest.raises(PipelineError, match=message) as exc:
        grid.expand(given)
    assert "\n" not in str(exc.value)


def test_each_configuration_is_checked_as_a_stage_checks_params():
    params_file = ROOT / "params.yaml"
    grid.check_cells(params_file, grid.expand(GRID + ["~pretrained.bases.vgg16"]))
    with pytest.raises(PipelineError, match="Could not override 'train.baseline.lerning_rate'"):
        grid.check_cells(params_file, [("train.baseline.lerning_rate=0.1",)])
    with pytest.raises(PipelineError, match="train.augmented.dropout: Input should be less than 1"):
        grid.check_cells(params_file, grid.expand(["train.augmented.dropout=0.5,3"]))


def test_an_args_file_is_a_list_of_set_params(tmp_path):
    good = tmp_path / "grid.args"
    good.write_text("# two rates\n-S 'train.baseline.learning_rate=choice(1e-3, 2e-3)'\n-S ~x.y\n")
    assert grid.read_args_file(good) == ["train.baseline.learning_rate=choice(1e-3, 2e-3)", "~x.y"]
    assert sweep_run.given_overrides(["a=1"], str(good))[-1] == "a=1"  # the command line's last
    for text in ("-S a=1 -S", "--seeds 1-3", "-S 'a=1"):
        (tmp_path / "bad.args").write_text(text)
        with pytest.raises(PipelineError, match="--args-file .*bad.args: "):
            grid.read_args_file(tmp_path / "bad.args")


# --- fast: the report, on runs logged to a real store ---------------------------------

RATES = {  # learning rate: test accuracy per seed (1, 2, 3); 0.003 has no seed 3 yet
    "0.001": [0.80, 0.82, 0.84],
    "0.002": [0.70, 0.71, 0.72],
    "0.003": [0.79, 0.83],
}


def log_training_run(name: str, model: str, seed: int, accuracy: float) -> str:
    """A finished training run as a sweep's experiment logs it."""
    import mlflow

    tags = {"dvc.exp_name": name, "pipeline.model": model}
    with mlflow.start_run(run_name=model, tags=tags) as active:
        mlflow.log_params({"train.seed": seed, f"train.{model}.epochs": 3})
        mlflow.log_metrics({"test_accuracy": accuracy, "best_val_accuracy": accuracy + 0.01})
    return active.info.run_id


@pytest.fixture
def logged(params, tmp_path, monkeypatch):
    """A sweep of 3 learning rates x 3 seeds of baseline, 8 of its 9 runs in a real store,
    with an older run replaced and another sweep's run beside them."""
    from pipeline.tracking import store

    typed, raw = params
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store.connect()
    cells = grid.expand([f"train.baseline.learning_rate={','.join(RATES)}"])
    experiments = plan.plan(typed, raw, ["baseline"], [1, 2, 3], cells)
    log_training_run(experiments[0].name, "baseline", 1, 0.10)  # replaced by its rerun below
    for experiment in experiments:
        scores = RATES[experiment.overrides[0].partition("=")[2]]
        if experiment.seed <= len(scores):
            log_training_run(
                experiment.name, "baseline", experiment.seed, scores[experiment.seed - 1]
            )
    log_training_run("sweep-deadbeef-baseline-s1", "baseline", 1, 0.99)  # another sweep
    return experiments, cells


def test_the_report_ranks_configurations_and_tests_each_against_the_best(logged, tmp_path):
    import mlflow
    from scipy import stats

    from pipeline.tracking import store

    experiments, cells = logged
    finished = plan.finished_runs(experiments)
    assert set(finished) == {e.name for e in experiments} - {experiments[-1].name}
    ranked, missing = sweep_run.ranking(experiments, report.cell_labels(cells))
    assert missing == [experiments[-1].name]  # 0.003, seed 3
    assert list(ranked["group"]) == [
        f"baseline (train.baseline.learning_rate={rate})" for rate in ("0.001", "0.003", "0.002")
    ]
    p = [
        stats.ttest_ind(RATES["0.001"], RATES[r], equal_var=False).pvalue
        for r in ("0.003", "0.002")
    ]
    holm = sorted(p)[0] * 2, max(sorted(p)[0] * 2, sorted(p)[1])
    assert p[1] < p[0]  # so 0.002's Holm p is the smaller one, doubled
    assert ranked["p_holm"].iloc[2] == pytest.approx(holm[0])
    assert ranked["p_holm"].iloc[1] == pytest.approx(min(1.0, holm[1]))
    assert list(ranked["beyond_noise"]) == [False, False, True]

    path = report.write("sweep-test", "`python -m pipeline sweep ...`", ranked, missing)
    text = path.read_text()
    assert path == Path("reports/sweep-test.md") and (tmp_path / path).exists()
    rows = [line for line in text.splitlines() if line.startswith("| baseline")]
    assert rows[0].startswith(
        "| baseline (train.baseline.learning_rate=0.001) | 3 | 1, 2, 3 | 0.8200 ± 0.0200 | 0.8300 ± 0.0200 | best |"
    )
    assert rows[1].startswith(
        "| baseline (train.baseline.learning_rate=0.003) | 2 | 1, 2 | 0.8100 ± 0.0283 |"
    )
    assert rows[1].endswith("| no |") and rows[2].endswith("| yes |")
    assert f"| -0.1100 | {p[1]:.3g} | {holm[0]:.3g} | yes |" in rows[2]
    assert f"Not finished (run the same command again): {experiments[-1].name}." in text
    (logged_run,) = mlflow.search_runs(
        experiment_names=[store.EXPERIMENT],
        filter_string="tags.`pipeline.sweep` = 'sweep-test'",
        output_format="list",
    )
    assert logged_run.info.run_name == "sweep-test"
    key = "baseline _train.baseline.learning_rate_0.002_"
    assert logged_run.data.metrics[f"{key}.test_accuracy_mean"] == pytest.approx(0.71)
    assert logged_run.data.metrics[f"{key}.p_holm"] == pytest.approx(holm[0])
    artifacts = mlflow.MlflowClient().list_artifacts(logged_run.info.run_id)
    assert [a.path for a in artifacts] == ["sweep-test.md"]


# --- fast: refusals before any work ----------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A committed git repo with DVC initialised, no remotes."""
    from dvc.repo import Repo

    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    Repo.init(str(path)).close()
    (path / "params.yaml").write_text("train: {seed: 1}\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return path


def set_dvc_remote(repo: Path, url: str | None) -> None:
    """`dvc remote add -d store URL` (None: `dvc remote default --unset`), in this process."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc, dvc.config.edit() as config:
        if url:
            config["remote"]["store"] = {"url": url}
            config["core"]["remote"] = "store"
        else:
            del config["core"]["remote"]


@pytest.fixture
def pushed(repo, tmp_path) -> Path:
    """`repo` with a bare git remote `origin` that has its commit, and a DVC remote."""
    bare = tmp_path / "remote.git"
    run(["git", "init", "-q", "--bare", str(bare)], tmp_path)
    git(repo, "remote", "add", "origin", str(bare))
    set_dvc_remote(repo, str(tmp_path / "dvc"))
    git(repo, "commit", "-qam", "DVC remote")
    git(repo, "push", "-q", "origin", "HEAD:refs/heads/main")
    return repo


@pytest.fixture
def listening():
    """A TCP port on 127.0.0.1 that accepts connections (a stand-in for a Ray head)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"ray://127.0.0.1:{server.getsockname()[1]}"


SERVER = "http://127.0.0.1:5000"


def test_a_good_ray_setup_passes(pushed, listening):
    address, url = checks.refuse_bad_ray_setup(pushed, listening, SERVER, "origin")
    assert address == listening and url.endswith("remote.git")


def test_a_local_tracking_store_is_refused_for_a_cluster(pushed, listening, tmp_path):
    for uri in (f"sqlite:///{tmp_path}/mlflow.db", "./mlruns"):
        with pytest.raises(PipelineError, match="a local store that Ray workers cannot write"):
            checks.refuse_bad_ray_setup(pushed, listening, uri, "origin")


def test_no_git_remote_is_refused(repo, listening):
    with pytest.raises(PipelineError, match="git remote 'origin': not set"):
        checks.refuse_bad_ray_setup(repo, listening, SERVER, "origin")


def test_a_commit_not_pushed_or_uncommitted_changes_are_refused(pushed, listening):
    (pushed / "params.yaml").write_text("train: {seed: 2}\n")
    with pytest.raises(PipelineError, match=r"uncommitted changes \(params.yaml\)"):
        checks.refuse_bad_ray_setup(pushed, listening, SERVER, "origin")
    git(pushed, "commit", "-qam", "seed 2")
    with pytest.raises(PipelineError, match="is not pushed to git remote 'origin'"):
        checks.refuse_bad_ray_setup(pushed, listening, SERVER, "origin")
    git(pushed, "push", "-q", "origin", "HEAD:refs/heads/main")
    checks.refuse_bad_ray_setup(pushed, listening, SERVER, "origin")


def test_no_dvc_remote_is_refused(pushed, listening):
    set_dvc_remote(pushed, None)
    git(pushed, "commit", "-qam", "no DVC remote")
    git(pushed, "push", "-q", "origin", "HEAD:refs/heads/main")
    with pytest.raises(PipelineError, match="no default DVC remote"):
        checks.refuse_bad_ray_setup(pushed, listening, SERVER, "origin")


def test_an_unreachable_ray_address_fails_fast(pushed, monkeypatch):
    address = f"ray://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PipelineError, match=f"Ray address {address}: unreachable"):
        checks.refuse_bad_ray_setup(pushed, address, SERVER, "origin")
    assert time.monotonic() - started < checks.CONNECT_TIMEOUT_S + 2
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(PipelineError, match="--on auto: RAY_ADDRESS is not set"):
        checks.ray_address("auto")
    for bad in ("ray.example:10001", "ray://host-without-port"):
        with pytest.raises(PipelineError, match="expected"):
            checks.refuse_bad_ray_setup(pushed, bad, SERVER, "origin")


def test_the_cli_refuses_in_one_line_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    on = f"ray://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["sweep", "--model", "baseline", "--seeds", "1-2", "--on", on])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: MLFLOW_TRACKING_URI=sqlite:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "mlflow.db").exists() and not list(project.glob(".dvc/tmp/exps/*"))


def test_without_ray_installed_the_cluster_path_says_how_to_install(monkeypatch):
    from pipeline.sweep import ray_cluster

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(PipelineError, match="uv sync --locked --group ray"):
        ray_cluster._import_ray()


class FlakyClientProxy:
    """Stands in for `ray` where a real head cannot be made to fail on demand: its client
    proxy aborts the first `failures` connections, as it does when the per-driver server it
    starts dies at startup (as it can under load)."""

    def __init__(self, failures: int):
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server:\nTraceback ...")

    def shutdown(self):
        self.shutdowns += 1


def test_a_client_server_that_dies_at_startup_is_retried(monkeypatch, capsys):
    from pipeline.sweep import ray_cluster

    monkeypatch.setattr(ray_cluster.time, "sleep", lambda s: None)
    proxy = FlakyClientProxy(failures=2)
    ray_cluster._connect(proxy, "ray://127.0.0.1:1")
    assert (proxy.inits, proxy.shutdowns) == (3, 2)  # each failed half-connection closed
    assert capsys.readouterr().out.count("retrying") == 2

    proxy = FlakyClientProxy(failures=ray_cluster.CONNECT_ATTEMPTS)
    with pytest.raises(PipelineError, match=r"failed 3 times \(Initialization failure") as exc:
        ray_cluster._connect(proxy, "ray://127.0.0.1:1")
    assert "\n" not in str(exc.value)


def test_the_stages_never_import_ray():
    """Only pipeline/sweep/ray_cluster.py names ray; the stages' modules never load it."""
    naming = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pipeline").rglob("*.py")
        if re.search(r"^\s*(import ray|from ray\b)", path.read_text(), re.M)
    ]
    assert naming == ["pipeline/sweep/ray_cluster.py"]


# --- slow: a real Ray cluster, git and DVC remotes, a tracking server ---------------------

TINY_SWEEP = {  # only `baseline`, 1 epoch, on 48 px images
    "split": {"train": 16, "validation": 6, "test": 6},
    "prepare": {"image_sizes": [48]},
    "train": {"baseline": {"image_size": 48, "epochs": 1, "batch_size": 8}},
    "pretrained": {"bases": {"vgg16": {"image_size": 48}, "efficientnet_lite0": None}},
}


def kill_when_training(seed: int, head: RayHead, sweep, timeout: float = 480) -> None:
    """Kill the `dvc exp run` of `seed` and everything under it once its training process
    runs: a task killed mid-way. Checks the cluster's sockets while it is busy. Seed 1 runs
    first (a task takes both CPUs), so the timeout covers its whole training too."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sweep.poll() is not None:
            out, err = sweep.communicate()
            pytest.fail(
                f"the sweep ended before seed {seed} trained:\n{out}\n{err}\n{head.client_logs()}"
            )
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if "exp run" not in cmdline or f"train.seed={seed}" not in cmdline:
                continue
            with contextlib.suppress(psutil.Error):
                tree = proc.children(recursive=True)
                if any("pipeline train" in " ".join(c.cmdline()) for c in tree):
                    head.assert_loopback_only()  # workers are up now
                    for victim in [proc, *tree]:
                        with contextlib.suppress(psutil.Error):
                            victim.send_signal(signal.SIGKILL)
                    return
        time.sleep(0.3)
    pytest.fail(f"no training of seed {seed} seen in {timeout} s")


@pytest.fixture
def ray_head():
    head = RayHead()
    try:
        yield head
    finally:
        head.stop()


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.waits  # on the cluster's client server, which can take 2 minutes to answer
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed: uv sync --locked --group ray (docs/scaling.md)",
)
def test_sweep_on_a_real_ray_cluster_survives_a_killed_task(tmp_path, ray_head):
    from tests.helpers.project import tiny_project

    server = MlflowServer(tmp_path)  # starts while the project's data stages run
    try:
        project = tiny_project(tmp_path, TINY_SWEEP, per_class=30, size=48)
        bare = tmp_path / "remote.git"
        run(["git", "init", "-q", "--bare", str(bare)], tmp_path)
        run(["dvc", "repro", "prepare@48"], project)
        run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-remote")], project)
        git(project, "remote", "add", "origin", str(bare))
        git(project, "add", "-A")
        git(project, "commit", "-qm", "data stages; DVC remote")
        git(project, "push", "-q", "origin", "HEAD:refs/heads/main")
        run(["dvc", "push"], project)
        ray_head.wait_started()
        server.wait_healthy()
        env = {"MLFLOW_TRACKING_URI": server.url, **RAY_ENV}
        sweep = ["python", "-m", "pipeline", "sweep", "--model", "baseline", "--seeds", "1-2",
                 "--on", ray_head.address]  # fmt: skip

        first = subprocess.Popen(
            sweep, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=command_env(env),
        )  # fmt: skip
        try:
            kill_when_training(2, ray_head, first)
            out, err = first.communicate(timeout=480)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 1, out + err
        assert re.search(r"^done +sweep-\w+-baseline-s1 \(baseline, seed 1\): clone", out, re.M)
        failed = re.search(
            r"^FAILED +sweep-\w+-baseline-s2: seed 2, stage baseline, step run", out, re.M
        )
        assert failed, out
        assert "    | $ dvc exp run --name" in out  # the tail of its log
        assert err.strip().splitlines()[-1].startswith("error: 1 of 2 experiments failed")
        assert "| baseline | 1 | 1 |" in out  # compare over what finished
        ray_head.assert_loopback_only()

        again = run(sweep, project, env=env)
        assert re.search(r"^skip +sweep-\w+-baseline-s1: finished", again.stdout, re.M)
        assert re.search(r"^done +sweep-\w+-baseline-s2 ", again.stdout, re.M), again.stdout
        assert "1 ran, 0 failed, 1 skipped" in again.stdout
        assert "| baseline | 2 | 1, 2 |" in again.stdout

        # The user's clone: the experiments come from the git remote, outputs from DVC's.
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", "-b", "main", str(bare), str(clone)], tmp_path)
        names = sorted(set(re.findall(r"sweep-\w+-baseline-s[12]", again.stdout)))
        run(["dvc", "exp", "pull", "origin", *names], clone)
        shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], clone).stdout
        assert all(name in shown for name in names), shown
        # `dvc exp pull` also fetched the experiments' outputs (the models) from the DVC remote.
        assert [p for p in (clone / ".dvc/cache").rglob("*") if p.is_file()]
        compared = run(
            ["python", "-m", "pipeline", "compare", "--model", "baseline", "--filter",
             f"tags.`dvc.exp_name` LIKE '{names[0].rsplit('-baseline', 1)[0]}-%'"],
            clone, env=env,
        ).stdout  # fmt: skip
        assert "| baseline | 2 | 1, 2 |" in compared
    finally:
        server.stop()


# --- slow: a grid on the local DVC queue, for real ---------------------------------------


@pytest.mark.slow
@pytest.mark.extended
def test_a_grid_sweep_on_the_local_queue_ranks_its_configurations_then_skips_them(tmp_path):
    """`python -m pipeline sweep` (--on local, the default) of 2 learning rates x 2 seeds of a
    1-epoch baseline: one queued DVC experiment per cell (`dvc exp run --queue`, `dvc queue
    start -j 2`), its -S overrides in each, trainings overlapping, into the user's one MLflow
    store (not the queue's copies of the workspace); 4 DVC experiments, 4 MLflow runs, a
    report with mean ± sd per configuration and a beyond-the-noise column, logged to MLflow;
    run again, it trains nothing."""
    from pipeline.tracking.store import EXPERIMENT
    from tests.helpers.project import tiny_project
    from tests.helpers.tracking import client_of, tracked_runs

    project = tiny_project(tmp_path, TINY_SWEEP, per_class=30, size=48)
    run(["dvc", "repro", "prepare@48"], project)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "data stages")
    argv = ["python", "-m", "pipeline", "sweep", "--model", "baseline", "--seeds", "1-2",
            "-j", "2", "-S", "train.baseline.learning_rate=0.001,0.002"]  # fmt: skip

    first = run(argv, project).stdout
    name = re.search(
        r"^(sweep-[0-9a-f]{8}): 4 experiments, 0 already done \(skipped\), 4 to run on this machine, 2 at a time",
        first,
        re.M,
    )
    assert name, first
    name = name.group(1)
    assert "4 ran, 0 failed, 0 skipped" in first, first
    trained = tracked_runs(project, "baseline")
    assert sorted(
        (r.data.params["train.baseline.learning_rate"], r.data.params["train.seed"], r.info.status)
        for r in trained
    ) == [(rate, seed, "FINISHED") for rate in ("0.001", "0.002") for seed in ("1", "2")]
    # -j 2: two trainings at a time, so some two overlapped in time
    assert any(
        a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
        for i, a in enumerate(trained)
        for b in trained[i + 1 :]
    )
    # in the user's store (its experiment's artifact location), not the queue's copies
    location = client_of(project).get_experiment_by_name(EXPERIMENT).artifact_location
    assert all(r.info.artifact_uri.startswith(location) for r in trained)
    assert not any(".dvc/tmp" in r.info.artifact_uri for r in trained)
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))
    names = {r.data.tags["dvc.exp_name"] for r in trained}
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(shown))}
    assert len(names) == 4 and names <= set(rows), shown
    for trained_run in trained:  # each experiment holds its own cell's params and scores
        row = rows[trained_run.data.tags["dvc.exp_name"]]
        assert row["State"] == "Success"
        assert (row["train.seed"], float(row["train.baseline.learning_rate"])) == (
            trained_run.data.params["train.seed"],
            float(trained_run.data.params["train.baseline.learning_rate"]),
        )
        assert float(row["baseline.test_accuracy"]) == trained_run.data.metrics["test_accuracy"]

    text = (project / f"reports/{name}.md").read_text()
    assert "| beyond the noise |" in text
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| baseline (train.baseline.learning_rate=0.00")
    ]
    assert len(rows) == 2, text
    for cells in rows:
        assert cells[1:3] == ["2", "1, 2"], text
        assert re.fullmatch(r"\d\.\d{4} ± \d\.\d{4}", cells[3]), text  # mean ± sd
    assert rows[0][5] == "best"
    assert rows[1][8] in ("yes", "no", "n/a (no spread)"), text  # beyond the noise
    assert text in first  # printed as well
    (logged,) = client_of(project).search_runs(
        [trained[0].info.experiment_id], f"tags.`pipeline.sweep` = '{name}'"
    )
    assert logged.info.run_name == name

    again = run(argv, project).stdout
    assert f"{name}: 4 experiments, 4 already done (skipped), 0 to run" in again
    assert sorted(re.findall(r"^skip    (\S+):", again, re.M)) == sorted(names)
    assert len(tracked_runs(project, "baseline")) == 4
