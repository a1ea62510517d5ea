"""Render benchmarks/results/*.json as markdown tables (pasted into benchmarks/README.md).

Usage:  python benchmarks/report.py [results_dir]
Most files hold ``meta`` (device, versions, the command that made it) and ``results`` (key -> numbers); the
profilers' and the tiny-model evaluations' files hold their ``command`` at the top level and nested numbers,
rendered as one row per leaf value.
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


def _leaves(value, prefix: str = ""):
    """(dotted key, value) for every number / string under ``value``; long texts (tracebacks, profiles) left out."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    elif not (isinstance(value, str) and len(value) > 200):
        yield prefix, value


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    if "meta" in data and "results" in data:
        return _render_results(path.name, data["meta"], data["results"])
    head = [f"### {path.name}", "", f"command: `{data.get('command')}`", "", "| measurement | value |", "|---|---|"]
    rows = [f"| {key} | {_fmt(value)} |" for key, value in _leaves({k: v for k, v in data.items() if k != "command"})]
    return "\n".join(head + rows) + "\n"


def _render_results(name: str, meta: dict, results: dict) -> str:
    lines = [
        f"### {name}",
        "",
        f"{meta.get('device')} · torch {meta.get('torch')} · diffusers {meta.get('diffusers')} · {meta.get('date')}",
        "",
        f"command: `{meta.get('command')}`",
        "",
        "| measurement | s (median) | min s | other |",
        "|---|---|---|---|",
    ]
    for key, value in results.items():
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
