# moved: see workbench/cli/magics.py; kept for other branches' tests (``from workbench.magics import RecordView``)
from workbench.cli.magics import *  # noqa: F401,F403
from workbench.cli.magics import RecordView, RunResult, load_ipython_extension  # noqa: F401
