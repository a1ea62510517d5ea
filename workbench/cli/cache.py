"""``workbench cache``: where torch.compile's artefacts are kept between processes, how big, and clearing them."""

from __future__ import annotations

import argparse


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
    return 0
