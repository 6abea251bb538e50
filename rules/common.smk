# Shared by every rules file: the config checked, the plan of every job (PLAN, lmft/plan.py: what each
# stage runs, with which parameters, and the targets), the folders and the wildcard constraints.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # lmft importable even without `pip install -e .`

from lmft.config import check_config
from lmft.plan import Plan

check_config(config)
PLAN = Plan(config)
DATA, RESULTS = PLAN.data, PLAN.results

wildcard_constraints:
    task=r"[A-Za-z0-9_.\-]+",
    k=r"\d+",
    seed=r"\d+",
    model=r"[A-Za-z0-9_.\-]+",
    method=r"[A-Za-z0-9_.:\-]+",
