"""The procedural family of LOCO-style categories: one new category per seed, with its rules and rule checker.

Development seeds (``DEV_SEEDS``) are for choosing defaults; report seeds (``REPORT_SEEDS``) are for reporting.
"""

from comgen.data.family.spec import (
                                     DEV_SEEDS,
                                     REPORT_SEEDS,
                                     RULE_TYPES,
                                     draw_spec,
                                     family_categories,
                                     family_name,
                                     is_family,
                                     parse_seeds,
)

__all__ = ["DEV_SEEDS", "REPORT_SEEDS", "RULE_TYPES", "draw_spec", "family_categories", "family_name", "is_family",
           "parse_seeds"]
