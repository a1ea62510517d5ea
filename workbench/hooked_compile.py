"""Compiled blocks beneath block-level cache hooks (``accel=first_block``, ``taylorseer`` at ``granularity=block``
with ``perf.compile=regional``).

Why: diffusers' cache hooks decide in Python, per step, whether a block runs (FirstBlockCache reads a residual's
change with ``.item()``, TaylorSeer counts steps), code a fullgraph compiled block cannot trace. A regional compile
sits *above* the hooks (``nn.Module.__call__`` -> the compiled ``_call_impl`` -> the hooked ``forward``). Here the
compiled code moves *beneath* them: each block's ``forward`` becomes its compiled call, the hooks wrap that, so the
skip logic runs eagerly and every block that runs, runs compiled. The compiled code is the same: the saved block
(``perf.precompile``) is called as it is; Dynamo's regional compile is replaced by one compile of the block class's
``forward`` with the same options (one graph for every block and text length, as before). Moving back restores
the regional compile untouched. Hooks inside the blocks (pyramid_attention, TaylorSeer on attention outputs) cannot
be served this way; ``config.accel.check_accel_fits`` refuses them with compile.
"""

from __future__ import annotations

import functools
import weakref

import torch

from workbench.compiling import STASH, TextDynamicCall, compile_block_forward, compiled_blocks, regional_options

_CLASS_FORWARDS: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def is_beneath(block) -> bool:
    return STASH in vars(block)


def move_beneath_hooks(transformer) -> None:
    """Each compiled block runs its compiled code as its ``forward`` (hooks registered next wrap it)."""
    from workbench.precompiled import PrecompiledCall

    for block in compiled_blocks(transformer):
        if is_beneath(block):
            continue
        call = block._compiled_call_impl
        if not isinstance(call, PrecompiledCall):  # Dynamo's compile of _call_impl would call the hooked forward
            call = TextDynamicCall(functools.partial(_class_forward(transformer, block), block))
        vars(block)[STASH] = block._compiled_call_impl
        block._compiled_call_impl = None
        block.forward = call


def move_above_hooks(transformer) -> None:
    """Undo ``move_beneath_hooks`` once the hooks are removed: the regional compile as it was."""
    for block in compiled_blocks(transformer):
        if is_beneath(block):
            vars(block).pop("forward", None)
            block._compiled_call_impl = vars(block).pop(STASH)


def _class_forward(transformer, block):
    """One compile of the block class's ``forward`` per transformer (the block is an argument: every block shares
    the graph), with the options of the regional compile it stands in for."""
    if transformer not in _CLASS_FORWARDS:
        _CLASS_FORWARDS[transformer] = compile_block_forward(type(block), regional_options(transformer))
    return _CLASS_FORWARDS[transformer]
