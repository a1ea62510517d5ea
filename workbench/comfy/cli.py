# moved: see workbench/cli/import_comfy.py; kept for other branches' tests (``from workbench.comfy.cli import main``)
from workbench.cli.import_comfy import main  # noqa: F401
