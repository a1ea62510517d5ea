"""Helpers shared by several test files (test files never import each other).

``tests/`` is on ``sys.path`` under pytest (rootdir conftest, no ``__init__.py``), so test files import
``from helpers.<module> import ...``.
"""
