"""Run one merge plan (JSON) through Studbook's engine: ``merge_studbook.py PLAN OUT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer-image"))

from studbook_trainer.merge import MergeParent, MergePlan, merge


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    parents = tuple(
        MergeParent(p["name"], Path(p["path"]), p.get("params", {})) for p in spec["parents"]
    )
    base = spec.get("base")
    plan = MergePlan(
        method=spec["method"],
        parents=parents,
        base=MergeParent(base["name"], Path(base["path"])) if base else None,
        params=spec.get("params", {}),
        dtype=spec.get("dtype"),
        device=spec.get("device", "auto"),
    )
    report = merge(plan, Path(sys.argv[2]))
    print(json.dumps(report.to_json()))


if __name__ == "__main__":
    main()
