"""`edgepipe sweep` on the session's trained tiny project (a real git + DVC repository): real DVC experiments
(`dvc exp run --temp`) whose shared steps come from DVC's run cache, a real MLflow SQLite store with the
parent and child runs, the release of the best candidate through the pipeline's own steps, and the exit-2
path when no candidate fits. The decision and plan functions are checked on their own first."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components.config import Params
from components.errors import EdgepipeError
from components.gates import gate_failures
from components.results import Artifact, Cell, GateVerdict, ValidationReport
from components.sweep import experiments, plan
from components.sweep.decision import best, best_without_budgets, judge, pareto_front
from components.sweep.search import optuna_search
from conftest import DVC, TINY_PARAMS, run

pytestmark = pytest.mark.slow


# --- the plan and the decision, on their own -------------------------------------------------------------


def test_set_options_make_a_grid_first_key_slowest_and_bad_options_are_named():
    space = plan.parse_options(["prune.target_sparsity=0.3,0.6", "model.width_multiplier=0.5,1.0"])
    assert space == {"prune.target_sparsity": [0.3, 0.6], "model.width_multiplier": [0.5, 1.0]}
    assert plan.grid(space)[:2] == [
        {"prune.target_sparsity": 0.3, "model.width_multiplier": 0.5},
        {"prune.target_sparsity": 0.3, "model.width_multiplier": 1.0},
    ]
    assert plan.Candidate("s-1", {"model.architecture": "mobilenet_v2", "x.y": None}).set_args() == [
        "-S",
        '++model.architecture="mobilenet_v2"',
        "-S",
        "++x.y=null",
    ]
    for bad, words in (("prune.target_sparsity", "KEY=VALUE"), ("a=1,1", "listed twice")):
        with pytest.raises(EdgepipeError, match=words):
            plan.parse_options([bad])
    with pytest.raises(EdgepipeError, match="given twice"):
        plan.parse_options(["a=1", "a=2"])


def test_a_candidates_unknown_key_or_bad_value_names_the_set_option(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(TINY_PARAMS))
    assert plan.candidate_params(params_file, {"prune.target_sparsity": 0.3}).prune.target_sparsity == 0.3
    with pytest.raises(
        EdgepipeError, match=r"(?s)-S prune\.target_sparsty=0\.3.*prune\.target_sparsty: unknown key"
    ):
        plan.candidate_params(params_file, {"prune.target_sparsty": 0.3})
    with pytest.raises(EdgepipeError, match=r"prune\.target_sparsity"):
        plan.candidate_params(params_file, {"prune.target_sparsity": 1.5})


def test_waves_run_one_candidate_per_training_setting_first():
    candidates = plan.make_candidates(
        "s", plan.grid({"prune.target_sparsity": [0.3, 0.6], "model.width_multiplier": [0.5, 1.0]})
    )
    first, rest = plan.waves(candidates)
    assert [c.overrides["model.width_multiplier"] for c in first] == [0.5, 1.0]  # each trains once
    assert {c.name for c in rest} == {"s-3", "s-4"}  # these find their trained model in the run cache
    assert len(plan.waves(plan.make_candidates("s", plan.grid({"prune.target_sparsity": [0.3, 0.6]})))) == 2


def test_a_failed_candidate_is_explained_by_the_steps_own_error(tmp_path):
    log = tmp_path / "c.log"
    log.write_text(
        "$ dvc exp run --temp -n s-1\nRunning stage 'train':\n"
        "edgepipe error: data/raw: the model did not learn (val accuracy 0.21)\n"
        "ERROR: failed to reproduce 'train': failed to run: edgepipe stage train, exited with 2\n"
    )
    said = "edgepipe error: data/raw: the model did not learn (val accuracy 0.21)"
    assert experiments.last_error(log) == said
    log.write_text("ERROR: failed to reproduce 'prepare': [Errno 2] No such file or directory\n")
    assert experiments.last_error(log).startswith("ERROR: failed to reproduce 'prepare'")


def with_budgets(target: str) -> Params:
    """The tiny params with the device's size and latency gates (`auto`, as the shipped params.yaml has
    them)."""
    gates = {
        **TINY_PARAMS["gates"],
        "max_bytes": {"tflite_int8": "auto"},
        "max_arena_bytes": "auto",
        "max_latency_ms": "auto",
    }
    return Params.model_validate({**TINY_PARAMS, "target": target, "gates": gates})


def _report(params: Params, bytes_: int, arena: int, score: float) -> ValidationReport:
    """A report whose gate verdict is the real gates' verdict on these measures."""
    artifacts = {
        "tflite_int8": Artifact(
            file="model_int8.tflite",
            container="tflite",
            precision="int8",
            source="qat",
            bytes=bytes_,
            gzip_bytes=bytes_ // 2,
            bytes_per_parameter=1.0,
            sha256="0" * 64,
        )
    }
    common = dict(
        format="tflite_int8",
        layout="NHWC",
        required=True,
        file="model_int8.tflite",
        precision="int8",
        loaded=True,
        accuracy=score,
        agreement=1.0,
        logit_error=0.01,
    )
    cells = [Cell(runtime="litert", **common), Cell(runtime="tflm", arena_bytes=arena, **common)]
    failures = gate_failures(params.gates, 0.98, artifacts, cells)
    return ValidationReport(
        float_accuracy=0.98,
        test_images=100,
        parameters=1000,
        artifacts=artifacts,
        cells=cells,
        gates=GateVerdict(passed=not failures, failures=failures),
    )


def test_each_candidate_is_judged_against_its_devices_budgets_with_the_excess_named():
    params = with_budgets("openmv_h7")  # 256 KiB flash and arena
    fits = judge(plan.Candidate("s-1", {"a": 1}), params, _report(params, 200_000, 60_000, 0.96), 0.2, "r1")
    big = judge(plan.Candidate("s-2", {"a": 2}), params, _report(params, 300_000, 300_000, 0.99), 0.2, "r2")
    assert fits.passed and fits.checks == {
        "flash": True,
        "arena": True,
        "accuracy": True,
        "runtimes": True,
        "latency": None,
    }
    assert not big.passed and big.checks["flash"] is False and big.checks["arena"] is False
    assert any("over by 37,856 B (+14%)" in miss for miss in big.misses)  # 300,000 - 262,144
    assert best([fits, big]) is fits and best_without_budgets([fits, big]) is big
    failed = judge(plan.Candidate("s-3", {"a": 3}), params, None, None, None, "Error: did not learn")
    assert not failed.passed and failed.misses == ["did not finish: Error: did not learn"]
    assert best([big, failed]) is None

    pi = with_budgets("raspberry_pi_4")  # 5 ms latency, no size limit
    slow = judge(plan.Candidate("s-4", {"a": 4}), pi, _report(pi, 900_000, 900_000, 0.99), 7.5, "r4")
    assert slow.checks["flash"] is None and slow.checks["latency"] is False
    assert slow.misses == [
        "tflite_int8 on litert: median latency 7.500 ms > gates.max_latency_ms 5: over by 2.500 ms (+50%)"
    ]
    assert pareto_front([fits, big], "flash_bytes") == [fits, big]


def test_optuna_search_runs_distinct_settings_in_batches_and_stops_when_the_space_is_spent():
    params = with_budgets("openmv_h7")
    batches = []

    def run_batch(settings):  # the score grows with sparsity; 0.9 is too big for the device
        batches.append(settings)
        return [
            judge(
                plan.Candidate(f"s-{s['p']}", s),
                params,
                _report(params, 300_000 if s["p"] == 0.9 else 100_000, 50_000, 0.9 + s["p"] / 10),
                0.1,
                "r",
            )
            for s in settings
        ]

    outcomes = optuna_search({"p": [0.1, 0.5, 0.9]}, trials=10, batch_size=2, seed=0, run_batch=run_batch)
    ran = [s["p"] for batch in batches for s in batch]
    assert sorted(ran) == [0.1, 0.5, 0.9] and all(len(b) <= 2 for b in batches)  # each setting once
    assert best(outcomes).candidate.overrides == {"p": 0.5}


# --- a real sweep on the trained tiny project --------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(trained, tmp_path_factory, prefect_api):
    from flows.sweep import sweep

    base = tmp_path_factory.mktemp("sweep")
    root = trained.copy(trained.unreleased, base)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv(
            "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )  # dvc.yaml's edgepipe
        # unclustered (the trained project's own settings) and clustered to 8 values per kernel (PCQAT)
        result = sweep(options=["prune.clusters=null,8"], project_dir=str(root))
    return {"root": root, "uri": uri, "result": result, "env": dict(os.environ, MLFLOW_TRACKING_URI=uri)}


def test_sweep_runs_each_candidate_as_a_dvc_experiment_reusing_the_trained_model(swept):
    root, result = swept["root"], swept["result"]
    names = [o.name for o in result.outcomes]
    assert len(names) == 2 and all(o.rev for o in result.outcomes)
    listed = run([*DVC, "exp", "list", "--rev", result.baseline, "--name-only"], root).stdout.split()
    assert sorted(listed) == sorted(names)
    shown = json.loads(run([*DVC, "exp", "show", "--json", "--rev", result.baseline], root).stdout)
    baseline = next(entry for entry in shown if entry["rev"] == result.baseline)
    revs = {e["name"]: e["revs"][0]["data"] for e in baseline["experiments"]}
    for outcome in result.outcomes:
        data = revs[outcome.name]
        assert (
            data["params"]["params.yaml"]["data"]["prune"]["clusters"]
            == outcome.candidate.overrides["prune.clusters"]
        )
        assert data["metrics"]["metrics/validation.json"]["data"]["float_accuracy"] == outcome.float_score
        # the float model is trained once (by the session fixture): every candidate restores it
        assert {"prepare", "train"} <= set(outcome.reused)
    same_as_trained, clustered = sorted(
        result.outcomes, key=lambda o: o.candidate.overrides["prune.clusters"] or 0
    )
    assert {"prune", "qat", "validate"} <= set(same_as_trained.reused)  # all from the session's own run
    assert "prune" not in clustered.reused


def test_clustering_and_sparsity_both_reach_the_int8_file(swept):
    """prune -> cluster -> PCQAT: the clustered candidate's int8 file holds at most 8 distinct weights per
    output channel and keeps the pruned zeros, and gzip sees it; it still passes every gate."""
    root, result = swept["root"], swept["result"]
    plain, clustered = sorted(result.outcomes, key=lambda o: o.candidate.overrides["prune.clusters"] or 0)
    reports = {o.name: experiments.report_at(root, o.rev) for o in (plain, clustered)}
    int8 = {name: report.artifacts["tflite_int8"] for name, report in reports.items()}
    assert int8[clustered.name].values_per_channel <= 8 < int8[plain.name].values_per_channel
    assert int8[clustered.name].gzip_bytes < int8[plain.name].gzip_bytes
    prune = json.loads(experiments.read_at(root, clustered.rev, "metrics/prune.json"))
    qat = json.loads(experiments.read_at(root, clustered.rev, "metrics/qat.json"))
    assert prune["clusters"] == 8 and prune["unique_weights_per_kernel"] <= 8
    assert prune["sparsity"] >= 0.45 and qat["sparsity"] == pytest.approx(prune["sparsity"], abs=0.01)
    assert qat["scheme"].startswith("PCQAT") and clustered.passed
    # TFLite-Micro's lookup-table compression turns the clusters into flash saved, same predictions
    mcu = json.loads(experiments.read_at(root, clustered.rev, "metrics/mcu.json"))
    assert mcu["lut_test_agreement"] == 1.0 and mcu["lut_max_abs_diff"] == 0.0
    assert mcu["lut_kernels"] >= 1 and mcu["lut_index_bits"] <= 3
    assert mcu["lut_flash_bytes"] < mcu["flash_bytes"] and "model_int8_lut.tflite" in mcu["files"]
    plain_mcu = json.loads(experiments.read_at(root, plain.rev, "metrics/mcu.json"))
    assert "lut_flash_bytes" not in plain_mcu


def test_sweep_records_a_parent_run_with_one_child_per_candidate_and_the_pareto_chart(swept):
    client, result = MlflowClient(swept["uri"]), swept["result"]
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["candidates"] == 2
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(o.name for o in result.outcomes)
    for child in children:
        outcome = next(o for o in result.outcomes if o.name == child.info.run_name)
        assert child.data.metrics["score"] == pytest.approx(outcome.score)
        assert child.data.metrics["release_bytes"] == outcome.flash_bytes
        assert child.data.tags["dvc_experiment_rev"] == outcome.rev
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/pareto.png", "sweep/sweep.md", "sweep/sweep.json"} <= artifacts
    assert result.chart.read_bytes()[:4] == b"\x89PNG"
    table = result.table.read_text()
    assert f"Decision: release {result.chosen.name}" in table and "| pass |" in table


def test_sweep_releases_the_best_candidate_as_edgepipe_run_does(swept):
    root, result = swept["root"], swept["result"]
    chosen = result.chosen
    assert chosen.score == max(o.score for o in result.outcomes)
    registration = result.release.registration
    assert registration.version == "1" and registration.git_tag == "tiny-patterns@v1"
    params = yaml.safe_load((root / "params.yaml").read_text())  # the workspace is the released candidate
    assert params["prune"]["clusters"] == chosen.candidate.overrides["prune.clusters"]
    tagged = yaml.safe_load(run(["git", "show", "tiny-patterns@v1:params.yaml"], root).stdout)
    assert tagged["prune"] == params["prune"]
    version = MlflowClient(swept["uri"]).get_model_version("tiny-patterns", "1")
    assert float(version.tags["test_accuracy"]) == pytest.approx(chosen.score)
    assert run([*DVC, "status"], root).stdout.strip().endswith("up to date.")
    run_tags = MlflowClient(swept["uri"]).get_run(registration.run_id).data.tags
    assert run_tags["edgepipe.sweep"] == result.sweep_id


def test_when_no_candidate_fits_the_sweep_exits_2_naming_each_miss_and_releases_nothing(swept):
    from flows.cli import app

    root = swept["root"]
    before = run(["git", "tag"], root).stdout
    cwd = Path.cwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", swept["uri"])
            mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            # Optuna picks one of the two budgets (one candidate: only validate and report run again)
            result = CliRunner().invoke(
                app, ["sweep", "-S", "gates.max_arena_bytes=1000,2000", "--search", "optuna", "--trials", "1"]
            )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    assert "no candidate of sweep-" in result.output and "passes every gate" in result.output
    assert re.search(r"gates\.max_arena_bytes [12]000: over by [\d,]+ B", result.output.replace("\n", " "))
    assert "1 candidates" in result.output
    assert run(["git", "tag"], root).stdout == before  # nothing released
    versions = MlflowClient(swept["uri"]).search_model_versions("name='tiny-patterns'")
    assert [str(v.version) for v in versions] == ["1"]
    failed = MlflowClient(swept["uri"]).search_runs(
        [MlflowClient(swept["uri"]).get_experiment_by_name("edgepipe-tests").experiment_id],
        "tags.`edgepipe.kind` = 'sweep' and attributes.status = 'FAILED'",
    )
    assert len(failed) == 1


def test_a_bad_set_option_stops_before_any_experiment(swept):
    from flows.cli import app

    def experiments() -> str:
        return run(["git", "for-each-ref", "refs/exps"], swept["root"]).stdout

    before, cwd = experiments(), Path.cwd()
    os.chdir(swept["root"])
    try:
        result = CliRunner().invoke(app, ["sweep", "-S", "prune.target_sparsty=0.3"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2 and "prune.target_sparsty: unknown key" in result.output
    assert experiments() == before
