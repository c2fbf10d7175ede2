"""Every artifact path, defined once. dvc.yaml is generated from `components.stages` which uses these,
and a test checks the committed dvc.yaml against it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.config import DataConfig


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    def raw_dir(self, data: DataConfig) -> Path:
        """data.raw_dir from params.yaml, relative to the project folder (as DVC reads it) unless absolute."""
        return self.root / data.raw_dir

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def manifest(self) -> Path:
        return self.prepared_dir / "manifest.json"

    def split_file(self, split: str) -> Path:
        return self.prepared_dir / f"{split}.npz"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def float_model(self) -> Path:
        return self.models_dir / "float.keras"

    @property
    def pruned_model(self) -> Path:
        return self.models_dir / "pruned.keras"

    @property
    def qat_weights(self) -> Path:
        """QAT weights only: the model is rebuilt from pruned.keras (safe to load, no custom-object file)."""
        return self.models_dir / "qat.weights.h5"

    @property
    def export_dir(self) -> Path:
        return self.models_dir / "export"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics_file(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def report_file(self) -> Path:
        return self.reports_dir / "report.md"

    @property
    def validation_file(self) -> Path:
        return self.metrics_dir / "validation.json"

    def history_file(self, stage: str) -> Path:
        """One row per epoch of a training step (train, prune, qat): the curves of dvc plots and MLflow."""
        return self.metrics_dir / f"{stage}_history.csv"

    @property
    def train_history(self) -> Path:
        return self.history_file("train")

    @property
    def release_predictions(self) -> Path:
        """actual,predicted per test image of the release model (DVC's confusion plot)."""
        return self.metrics_dir / "release_predictions.csv"

    @property
    def mcu_dir(self) -> Path:
        return self.models_dir / "mcu"

    @property
    def state_dir(self) -> Path:
        """Local state that is not the user's work (in .gitignore): `edgepipe serve`'s Prefect database and
        server logs, the data watcher's last announced hash."""
        return self.root / ".edgepipe"

    def rel(self, path: Path) -> str:
        """Path as written in dvc.yaml: relative to the project root, forward slashes."""
        return path.relative_to(self.root).as_posix()
