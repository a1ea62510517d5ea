"""``workbench models``: what the model roots and the HF cache hold, by the names configs use."""

from __future__ import annotations

import argparse
import json


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def main(argv: list[str]) -> int:
    from workbench.loading.discover import ENV, model_roots, scan

    p = argparse.ArgumentParser(prog="workbench models", description="List model files found under the model roots and in the HF cache.")
    p.add_argument("--root", action="append", default=[], help=f"model root (repeatable; default ${ENV} or ./models)")
    p.add_argument("--no-hf-cache", action="store_true", help="skip the local Hugging Face cache")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    roots = model_roots(args.root or None)
    entries = scan([str(r) for r in roots], hf_cache=not args.no_hf_cache)
    if args.json:
        print(json.dumps({"roots": [str(r) for r in roots], "models": [e.as_dict() for e in entries]}, indent=1))
        return 0
    unusable = [f"{r} is {'a file, not a folder' if r.exists() else 'missing'}" for r in roots if not r.is_dir()]
    print(f"model roots: {', '.join(map(str, roots))}" + (f"  ({'; '.join(unusable)})" if unusable else ""))
    if not entries:
        print(f"no model files found; put them under a root (ComfyUI folders text_encoders/, diffusion_models/, vae/, loras/) or set ${ENV}")
        return 0
    head = ("kind", "name", "family", "variant", "dtype", "size", "layout / note")
    # the note where it says more than the layout: a refusal's reason, a Turbo folder's sigmas
    rows = [(e.kind, e.name, e.family, e.variant or "", e.dtype, _size(e.size),
             e.note if e.kind == "refused" or "sigmas" in e.note else e.layout or e.note) for e in entries]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(6)]
    for row in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:6], widths)) + "  " + row[6])
    return 0
