"""Helpers shared by several test files (test files never import each other).

``tests/conftest.py`` puts ``tests/`` on ``sys.path``: test files import ``from helpers.<module> import ...``.
- ``checkpoints``: the tiny model written in every checkpoint layout (ComfyUI, diffusers, GGUF, HF cache);
- ``parity``: diffusers pipelines on a workbench's components, the text states a run fed its transformer.
"""
