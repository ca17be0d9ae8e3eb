#!/usr/bin/env python
"""Markdown tables from ``napari-sam-micro evaluate --json`` results (for docs/models.md)."""

from __future__ import annotations

import json
import sys


def main(paths) -> None:
    for path in paths:
        result = json.loads(open(path).read())
        mods = sorted({m for d in result["iou"].values() for k in d.values() for m in k if m != "all"})
        print(f"<!-- {path}: settings {json.dumps(result.get('settings', {}))} -->")
        print("| model | prompt | " + " | ".join(mods) + " | all |")
        print("|---|---|" + "---|" * (len(mods) + 1))
        for name in result["models"]:
            for kind, per in result["iou"].get(name, {}).items():
                cells = [f"{per[m]:.3f}" if m in per else "-" for m in mods + ["all"]]
                print(f"| {name} | {kind} | " + " | ".join(cells) + " |")
            if name in result.get("f1", {}):
                per = result["f1"][name]
                cells = [f"{per[m]:.3f}" if m in per else "-" for m in mods] + ["-"]
                print(f"| {name} | everything F1@0.5 | " + " | ".join(cells) + " |")
        counts = ", ".join(f"{m} {n}" for m, n in sorted(result["n_objects"].items()))
        print(f"\nObjects: {counts}; images: {len(result['images'])}.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
