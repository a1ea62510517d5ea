"""``workbench cache``: where torch.compile's artefacts are kept between processes, how big, what the saved compiled
blocks were compiled for (so a warm start that compiles again can be explained), and clearing them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_FACTS_LIMIT = 1 << 20  # facts.json is a few KB; anything larger is not one of ours
_VERSIONS = ("python", "torch", "diffusers", "torchao")


def main(argv: list[str]) -> int:
    from workbench.cli.models import _size
    from workbench.config import CompileMode, PerfConfig
    from workbench.user_cache import ENV, check_cache_dir

    p = argparse.ArgumentParser(prog="workbench cache",
                                description=f"The compile cache (perf.compile=regional/full): ${ENV}, else the workbench's cache folder.")
    p.add_argument("--clear", action="store_true", help="delete it (the next compile in a new process is cold again)")
    args = p.parse_args(argv)
    check_cache_dir(PerfConfig(compile=CompileMode.regional))  # before torch, which fails on a bad $ENV: exit 2
    from workbench.compiling import PRECOMPILED, cache_dir, cache_size_bytes, clear_cache

    path = cache_dir()
    if args.clear:
        print(f"cleared {path} ({_size(clear_cache(path))})")
        return 0
    state = _size(cache_size_bytes(path)) if path.is_dir() else "empty (nothing compiled yet)"
    saved = len(list((path / PRECOMPILED).glob("*/*.bin")))
    print(f"compile cache: {path}  {state}" + (f"  ({saved} saved compiled block(s), perf.precompile)" if saved else ""))
    for line in saved_blocks(path / PRECOMPILED):
        print(line)
    return 0


def saved_blocks(root: Path) -> list[str]:
    """One line per saved block's key: its block class, what it was compiled for, its variants, whether this
    process can use it. ``facts.json`` is read as data (size-capped, shown, never acted on)."""
    from workbench.cli.models import _size
    from workbench.precompiled import FACTS, static_versions
    from workbench.trusted_files import why_untrusted

    here = static_versions()
    lines = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else ():
        variants = list(folder.glob("*.bin"))
        untrusted = why_untrusted(folder, root)
        if not variants and not untrusted:  # every variant removed (stale): nothing to say
            continue
        facts = _read_facts(folder / FACTS)
        block = ", ".join(m.rsplit(".", 1)[-1] for m in facts.get("modules", []) if m.endswith("Block")) or "?"
        made = " ".join(f"{k} {facts.get(k) or '-'}" for k in _VERSIONS)
        notes = [f"{len(variants)} variant(s)", _size(sum(v.stat().st_size for v in variants))]
        other = [f"{k} {facts.get(k) or '-'} (here {here[k] or '-'})" for k in _VERSIONS
                 if k in facts and facts.get(k) != here[k]]
        if other:
            notes.append("not used here: compiled for " + ", ".join(other))
        if untrusted:
            notes.append(f"not loaded: {untrusted}")
        what = (f"{block}  {made}  {facts.get('device', '?')}  {facts['attention']}" if facts.get("torch")
                else f"(no readable {FACTS})")
        lines.append(f"  {folder.name[:12]}  {what}  {'; '.join(notes)}")
    return lines


def _read_facts(path: Path) -> dict:
    try:
        if path.stat().st_size > _FACTS_LIMIT:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out = {k: _shown(v) for k, v in data.items() if isinstance(v, str)}
    out["modules"] = [_shown(m) for m in data.get("modules", []) if isinstance(m, str)] if isinstance(
        data.get("modules"), list) else []
    out["attention"] = _attention(data.get("processors"))
    return out


def _attention(processors) -> str:
    """``FastQwenAttnProcessor kernel=sdpa`` from the facts' processor entries ([class, [[name, value], ...]])."""
    shown = set()
    for entry in processors if isinstance(processors, list) else ():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list):
            kernel = [v for kv in entry[1] if isinstance(kv, list) and len(kv) == 2 and kv[0] == "kernel"
                      for v in kv[1:] if isinstance(v, str)]
            name = entry[0].rsplit(".", 1)[-1] + (f" kernel={kernel[0].split(':')[0].split('.')[-1]}" if kernel else "")
            shown.add(_shown(name))
    return ", ".join(sorted(shown)) or "?"


def _shown(text: str) -> str:
    """Printable and short: a file's text never reaches the terminal as control sequences."""
    return "".join(c if c.isprintable() else "?" for c in text[:120])
