"""Prefect cache keys for pipeline steps: the step's name, the task's source, its params sections, and the
content of every file it reads (code and data). Outputs are not part of the key: the flow refreshes the
cache of a step whose outputs DVC no longer finds as dvc.lock records them (deleted or edited by hand)."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

from components.hashing import tree_digest
from components.paths import ProjectPaths
from components.stages import get_stage


def stage_cache_key(context, parameters: dict) -> str:
    stage = get_stage(parameters["stage_name"])
    params = parameters["params"]
    paths = ProjectPaths(Path(parameters["root"]))
    digest = hashlib.sha256()
    digest.update(stage.name.encode())
    digest.update(inspect.getsource(context.task.fn).encode())
    digest.update(params.section_digest(*stage.params).encode())
    for path in stage.dep_paths(paths, params):
        digest.update(str(path).encode())
        digest.update(tree_digest(path).encode())
    return f"edgepipe-{stage.name}-{digest.hexdigest()}"
