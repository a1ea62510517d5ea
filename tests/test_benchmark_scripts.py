"""The GPU benchmark scripts only run on the GPU machine, so a refactor can leave them stale without any test
noticing (bench_gpu.py imported ``workbench.config.schema`` for weeks after that module was split): every
``workbench`` import they make, at module level or inside a function, must resolve here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def _workbench_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "workbench":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "workbench"]
    return found


def test_there_are_scripts_to_check():
    assert any(p.name == "bench_gpu.py" for p in SCRIPTS)
    assert _workbench_imports(ROOT / "benchmarks" / "bench_gpu.py")  # imports inside functions are found too


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_workbench_import_resolves(script):
    missing = []
    for line, module, names in _workbench_imports(script):
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"line {line}: {module} ({err})")
            continue
        for name in names:
            if not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"line {line}: {module}.{name}")
    assert not missing, f"{script.relative_to(ROOT)}: " + "; ".join(missing)


def test_a_stale_import_is_caught(tmp_path):
    stale = tmp_path / "bench_old.py"
    stale.write_text("def f():\n    from workbench.config.schema import PerfConfig\n")
    ((line, module, names),) = _workbench_imports(stale)
    assert (line, module, names) == (2, "workbench.config.schema", ["PerfConfig"])
    with pytest.raises(ImportError):
        importlib.import_module(module)


def test_report_renders_every_committed_result_file():
    """benchmarks/README.md says ``report.py`` renders every results file: the profilers' files (no ``meta``) too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert len(files) > 50
    for path in files:
        text = report.render(path)
        assert text.startswith(f"### {path.name}\n") and "command: `" in text and "| --- |" not in text
        assert "Traceback" not in text and len(text.splitlines()) > 6, path.name
    profile = report.render(ROOT / "benchmarks" / "results" / "h200_run30_first_call_fp8_warm_pyc_1.json")
    assert "| phases.build_s | 7.839 |" in profile
    assert "TorchDynamo compilation metrics" not in profile  # long texts (the compile-time table) are left out
