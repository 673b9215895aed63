"""`resnet-serve backends decide --out DIR`: the backend decision made ahead of time.

Run once per model and machine type (on one machine of that type, quiet), it decides the
backend as a first start would, then writes the decision and the winner's converted model
into DIR. A fleet ships DIR (in its image, or on a shared volume) and points
RESNET_SERVE_BACKEND_DECISIONS at it: a start there serves the winner from its first
request. A start on another CPU, library version or model finds no decision for itself in
DIR and decides again.
"""

import shutil
from pathlib import Path

from service.model.backend_search import choose
from service.model.runtime import load_parts
from service.model.selection import (
    candidates,
    converted_model_dir,
    decision_identity,
    decision_path,
    write_decision,
)
from service.settings import Settings


def run_decide_command(settings: Settings, out: Path) -> int:
    parts = load_parts(settings)
    choice, _ = choose(parts, settings)
    identity = decision_identity(
        settings, parts.spec, candidates(settings, parts.device), parts.device
    )
    record = decision_path(out, identity)
    write_decision(record, choice, identity)
    shipped = [record.name]
    if choice.candidate.backend == "openvino":
        converted = converted_model_dir(choice.candidate, parts, settings)
        shutil.copytree(converted, out / converted.name, dirs_exist_ok=True)
        shipped.append(converted.name)
    print(f"{choice.candidate} at batch {choice.batch_size}: {choice.reason}")
    print(f"for: {identity['cpu']}, {identity['device']}, libraries {identity['versions']}")
    print(f"written to {out}: {', '.join(shipped)}")
    print(f"ship it and set RESNET_SERVE_BACKEND_DECISIONS={out}")
    return 0
