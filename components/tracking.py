"""The MLflow run of one pipeline run. It opens when the flow starts and fills as the steps end: the
params, the dataset as MLflow inputs, per-epoch curves of train, prune and QAT. It closes when the flow
ends: FINISHED, or FAILED (KILLED when cancelled) with the error at the top of its description.
components.register adds the validation matrix, the files and the model version to the same run.

A tracking store that does not answer at the start does not stop the pipeline (the artifacts are worth
making): what would have been logged waits, and is logged when the run opens at registration.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from components import versioning
from components.atomic import read_json
from components.config import Params
from components.errors import EdgepipeError
from components.paths import ProjectPaths
from components.prepare import describe_data
from components.registry import check_reachable
from components.results import VAL_SCORE_COLUMN

log = logging.getLogger(__name__)


def flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}


DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
Action = Callable[[MlflowClient, str], None]


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created by a concurrent run in between
        return client.get_experiment_by_name(name).experiment_id


def identity_tags(params: Params, root: Path, prefect_run_id: str) -> dict[str, str]:
    """What ties the MLflow run to the Prefect run, the code and the settings it ran with."""
    return {
        "prefect_flow_run_id": prefect_run_id,
        "git_commit": versioning.git_commit(root),
        "params_hash": params.section_digest(*Params.model_fields),
    }


def input_tags(prepare_metrics: dict) -> dict[str, str]:
    """The model input `prepare` decided, and why (`auto` or params.yaml), as MLflow run tags."""
    data = prepare_metrics
    chosen = "; ".join(f"{k} {v}" for k, v in data.get("image_chosen", {}).items())
    return {
        "input_shape": f"{data['image_height']}x{data['image_width']}x{data['image_channels']}",
        "input_chosen": chosen or "params.yaml",
    }


def fit_tag(text: str) -> str:
    """A tag value within the store's limit (the whole text is in the run's files)."""
    if len(text) <= MAX_TAG_VAL_LENGTH:
        return text
    return text[: MAX_TAG_VAL_LENGTH - 60] + "\n\n… (the whole report: reports/report.md)"


@dataclass
class PipelineRun:
    uri: str
    experiment: str
    name: str
    tags: dict[str, str]
    params: Params
    run_id: str | None = None
    _pending: list[Action] = field(default_factory=list)

    def open(self) -> bool:
        """Create the run (once) and log what waited for it. False when the store does not answer."""
        if self.run_id is not None:
            return True
        try:
            check_reachable(self.uri)
        except EdgepipeError as exc:
            log.warning("%s The pipeline goes on; its MLflow run starts at registration.", exc)
            return False
        client = MlflowClient(self.uri)
        run = client.create_run(experiment_id(client, self.experiment), run_name=self.name, tags=self.tags)
        self.run_id = run.info.run_id
        params = flatten("", self.params.model_dump(mode="json"))
        client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])
        pending, self._pending = self._pending, []
        for action in pending:
            self._do(action)
        return True

    def _do(self, action: Action) -> None:
        if self.run_id is None:
            self._pending.append(action)
            return
        try:
            action(MlflowClient(self.uri), self.run_id)
        except Exception as exc:  # the store went away mid-run: the pipeline's result does not depend on it
            log.warning("MLflow run %s: could not log (%s: %s)", self.run_id, type(exc).__name__, exc)

    def log_history(self, stage: str, history_file: Path) -> None:
        """Each column of a training step's history CSV as the metric `<stage>.<column>`, one step per epoch:
        the run page draws them as curves."""
        with history_file.open() as handle:
            rows = list(csv.DictReader(handle))

        def action(client: MlflowClient, run_id: str) -> None:
            metrics = [
                Metric(f"{stage}.{name}", float(value), 0, int(row["epoch"]))
                for row in rows
                for name, value in row.items()
                if name not in ("epoch", VAL_SCORE_COLUMN)  # a copy of the task's score, for dvc plots
            ]
            client.log_batch(run_id, metrics=metrics)

        self._do(action)

    def log_dataset(self, prepared_dir: Path, data_dir: Path, digest: str, class_counts: dict) -> None:
        """The train, validation and test splits as MLflow dataset inputs: the DVC md5 of the data folder as
        digest, the folder as source, the class counts as a tag."""
        import mlflow.data

        from components.dataset import load_split

        inputs = []
        for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
            x, y = load_split(prepared_dir, split)
            with warnings.catch_warnings():
                # a local folder is both a "local" and a "local artifact" source to MLflow; either is right
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                dataset = mlflow.data.from_numpy(
                    x, targets=y, source=str(data_dir), name=f"{data_dir.name}-{split}", digest=digest[:32]
                )
            counts = InputTag("class_counts", json.dumps(class_counts))
            inputs.append(
                DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context), counts])
            )
        self._do(lambda client, run_id: client.log_inputs(run_id, datasets=inputs))

    def log_prepared_data(self, paths: ProjectPaths, raw_dir: Path) -> None:
        """After `prepare`: the splits as dataset inputs, the model input it chose as tags, the data line as
        the run's description."""
        data = read_json(paths.metrics_file("prepare"))
        manifest = read_json(paths.manifest)
        self.log_dataset(paths.prepared_dir, raw_dir, versioning.data_md5(raw_dir), manifest["class_counts"])
        self.set_tags({**input_tags(data), DESCRIPTION_TAG: describe_data(data)})

    def set_tags(self, tags: dict[str, str]) -> None:
        def action(client: MlflowClient, run_id: str) -> None:
            for key, value in tags.items():
                client.set_tag(run_id, key, fit_tag(value))

        self._do(action)

    def end(self, error: BaseException | None) -> None:
        """FINISHED, or FAILED/KILLED with the error message as the `error` tag and atop the description."""
        if self.run_id is None:
            return
        client = MlflowClient(self.uri)
        status = RunStatus.to_string(RunStatus.FINISHED)
        try:
            if error is not None:
                cancelled = isinstance(error, KeyboardInterrupt) or type(error).__name__ == "CancelledError"
                status = RunStatus.to_string(RunStatus.KILLED if cancelled else RunStatus.FAILED)
                message = str(error) or type(error).__name__
                client.set_tag(self.run_id, "error", fit_tag(message))
                described = client.get_run(self.run_id).data.tags.get(DESCRIPTION_TAG, "")
                headline = "**Failed**" if not cancelled else "**Cancelled**"
                quoted = "\n>\n".join(f"> {line}" for line in message.splitlines())  # wraps, unlike code
                text = f"{headline}:\n\n{quoted}\n\n{described}"
                client.set_tag(self.run_id, DESCRIPTION_TAG, fit_tag(text))
            client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.warning("MLflow run %s: could not mark it %s (%s)", self.run_id, status, exc)
