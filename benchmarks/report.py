"""Render benchmarks/results/*.json as markdown tables (pasted into benchmarks/README.md).

Usage:  python benchmarks/report.py [results_dir]
Each JSON holds ``meta`` (device, versions, the command that made it) and ``results`` (key -> numbers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if not isinstance(v, (dict, list)) and k != "trace")
    return str(value)


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    meta = data["meta"]
    lines = [
        f"### {path.name}",
        "",
        f"{meta.get('device')} · torch {meta.get('torch')} · diffusers {meta.get('diffusers')} · {meta.get('date')}",
        "",
        f"command: `{meta.get('command')}`",
        "",
        "| measurement | s (median) | min s | other |",
        "|---|---|---|---|",
    ]
    for key, value in data["results"].items():
        if isinstance(value, dict) and "median_s" in value:
            rest = {k: v for k, v in value.items() if k not in ("median_s", "min_s", "runs")}
            lines.append(f"| {key} | {value['median_s']:.4f} | {value['min_s']:.4f} | {_fmt(rest)} |")
        else:
            lines.append(f"| {key} | | | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    print("\n".join(render(p) for p in sorted(folder.glob("*.json"))))


if __name__ == "__main__":
    main()
