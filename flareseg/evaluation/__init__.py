"""flareseg.evaluation: FLARE23 DSC/NSD evaluation and the per-case efficiency harness.

Python API (used by stage-6, the benchmarks and the demo)::

    evaluate_case(pred, ref, spacing_zyx, cfg) -> {class: (dsc, nsd)}
    evaluate_folders(pred_dir, gt_dir, cfg, out_dir) -> EvaluationResult
    measure_efficiency(command_template, inputs, out_dir, interval=0.1) -> rows
"""
from flareseg.evaluation.efficiency import measure_efficiency, summarize, write_efficiency_reports
from flareseg.evaluation.evaluate import evaluate_folders, evaluate_pair, match_cases
from flareseg.evaluation.metrics import dice, evaluate_case, surface_dice
from flareseg.evaluation.report import format_table, summary_dict, write_reports
from flareseg.evaluation.result import EvaluationResult

__all__ = ["EvaluationResult", "dice", "evaluate_case", "evaluate_folders", "evaluate_pair", "format_table",
           "match_cases", "measure_efficiency", "summarize", "summary_dict", "surface_dice",
           "write_efficiency_reports", "write_reports"]
