"""What the model stages read: the features and task sets the data stages wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metarec.config import FeaturesConfig, TasksConfig
from metarec.data.arrays import FeatureArrays, TaskArrays


@dataclass
class Inputs:
    """Features and task sets as the feature/task steps wrote them."""

    features: FeatureArrays
    sets: dict[str, TaskArrays]
    training: tuple[str, ...]
    validation: tuple[str, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> TaskArrays:
        return concat_tasks([self.sets[n] for n in self.training])

    @property
    def valid(self) -> TaskArrays:
        return concat_tasks([self.sets[n] for n in self.validation])

    @property
    def scenarios(self) -> list[str]:
        """Evaluation sets: every base set that is neither training nor validation."""
        skip = set(self.training) | set(self.validation)
        return sorted(n for n in self.sets if "@" not in n and n not in skip)


def concat_tasks(parts: list[TaskArrays]) -> TaskArrays:
    """The task sets ``parts`` as one (rows stacked in order; one part is returned as is)."""
    if len(parts) == 1:
        return parts[0]
    if len({p.implicit for p in parts}) > 1:
        raise ValueError("cannot join explicit and implicit task sets")
    return TaskArrays(**{k: None if getattr(parts[0], k) is None
                         else np.concatenate([getattr(p, k) for p in parts])
                         for k in parts[0].__dict__})


def load_inputs(features_cfg: FeaturesConfig, tasks_cfg: TasksConfig) -> Inputs:
    """Read features.out_dir and tasks.out_dir (built by `metarec features/tasks build`)."""
    from metarec.data.tasks import MANIFEST_FILE, load_tasks
    from metarec.features.build import load_features

    path = Path(tasks_cfg.out_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} missing; run `metarec tasks build` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return Inputs(load_features(features_cfg.out_dir), load_tasks(tasks_cfg.out_dir),
                  tuple(manifest["training"]), tuple(manifest["validation"]), manifest)
