"""`lisa study`: does a policy (or LISA at all) beat the alternatives, over seeds and tuned rates?

A grid of methods and LISA variants x seeds x a small learning-rate sweep, the rate chosen on a
validation split carved from the training data, test scores reported over seeds with t
intervals and paired differences to uniform LISA. See docs/study.md.
"""

from lisa_apps.study.folder import StudyFolder
from lisa_apps.study.runner import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    StudyResult,
    choose_rates,
    run_study,
    summarise,
    summarise_curves,
    summarise_curves_at_time,
)
from lisa_apps.study.settings import EH_CHOICES, POLICY_NAMES, StudySettings, Variant
from lisa_apps.study.statistics import mean_interval, paired_difference

__all__ = [
    "CURVE_COLUMNS",
    "EH_CHOICES",
    "POLICY_NAMES",
    "RUN_COLUMNS",
    "StudyFolder",
    "StudyResult",
    "StudySettings",
    "Variant",
    "choose_rates",
    "mean_interval",
    "paired_difference",
    "run_study",
    "summarise",
    "summarise_curves",
    "summarise_curves_at_time",
]
