"""Evaluation stage: metrics, plots, leaderboard, best-model choice and the HTML report of trained runs.

It reads what the engine wrote into each run directory (summary.json, metrics.jsonl, val_predictions.npz)
and needs no torch. The modules are imported directly, so `import fashiondist.evaluation` stays instant:

- `sweep`: evaluate_sweep(parent_dir, run_dirs, console) -> (results, best), every file but report.html;
  report_sweep(parent_dir, run_dirs, console, extra): the same and report.html; report_run(run_dir,
  console); evaluate_path(path, console) for `fashiondist evaluate`;
- `scores`: evaluate_predictions(y_true, probs, class_names), evaluate_run(run_dir) -> VariantResult;
- `plots`: write_variant_plots(result), write_comparison_plot(parent_dir, results);
- `leaderboard`: rank, pick_best, write_leaderboard, write_best, print_leaderboard;
- `html`: write_html_report(parent_dir, results, best, extra, comparison_plot).
"""
