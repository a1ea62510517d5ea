"""How much work an ``accel`` method let run: calls of the hooked modules (transformer blocks, or attention
modules) and how many of them really computed. Their ratio is the method's speed-up in work, which does not
depend on the machine's load or on what else a step costs (the sweep table's ``work_speedup``).

Why by hand: diffusers' cache hooks keep no counts. Each hook calls the module's real forward through
``hook.fn_ref.original_forward`` when it computes and returns cached / extrapolated outputs otherwise, and is
itself entered through ``hook.fn_ref.forward``; both references are wrapped with a counter here (eager Python
around the hooks: compiled blocks beneath them are untouched) and unwrapped when the hooks go.
"""

from __future__ import annotations

from torch import nn


def cache_hook_names() -> set[str]:
    """The registry names of the methods' hooks, as diffusers names them; other hooks with a forward of their own
    (PEFT's input autocast, for one) are not the method's work."""
    from diffusers.hooks import first_block_cache as fbc
    from diffusers.hooks import pyramid_attention_broadcast as pab
    from diffusers.hooks import taylorseer_cache as tsc

    return {fbc._FBC_LEADER_BLOCK_HOOK, fbc._FBC_BLOCK_HOOK, tsc._TAYLORSEER_CACHE_HOOK, pab._PYRAMID_ATTENTION_BROADCAST_HOOK}


class _Counted:
    def __init__(self, fn, counts: dict, key: str):
        self.fn, self.counts, self.key = fn, counts, key

    def __call__(self, *args, **kwargs):
        self.counts[self.key] += 1
        return self.fn(*args, **kwargs)


def watch(model: nn.Module, counts: dict) -> None:
    """Count into ``counts["calls"]`` / ``counts["computed"]`` for every cache hook now on ``model``."""
    names = cache_hook_names()
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name, hook in registry.hooks.items() if registry is not None else ():
            ref = getattr(hook, "fn_ref", None) if name in names else None
            if ref is None or ref.original_forward is None or isinstance(ref.forward, _Counted):
                continue
            ref.forward = _Counted(ref.forward, counts, "calls")
            ref.original_forward = _Counted(ref.original_forward, counts, "computed")


def unwatch(model: nn.Module) -> None:
    """After the hooks are removed: diffusers put back the forward it had wrapped (our counter): unwrap it."""
    for module in model.modules():
        forward = vars(module).get("forward")
        if isinstance(forward, _Counted):
            module.forward = forward.fn
