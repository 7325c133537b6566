"""The results table's schema and the MLflow names of a sweep's runs: one definition for writer and readers.

A sweep writes one row per trial to ``results/<sweep>/trials.parquet`` (``sweeper.results``) and one
MLflow run per trial, nested under the sweep's parent run (``sweeper.tracking``); the analysis reads
either (``analysis.load``). Both sides import the names below. Pure Python: importing it costs nothing.
"""

from __future__ import annotations

# --- the results table -----------------------------------------------------------------------

#: The table's columns, in order; a trial's searched hyperparameters follow as ``hp.<name>`` columns.
#: ``status`` is running, completed, pruned or failed (the last three terminal); ``kind`` is grid (a
#: point of the law) or control (e.g. the RAE baseline: never fitted).
COLUMNS = ("trial_id", "point_id", "kind", "status", "expert_hidden", "fused_layers", "seed", "params",
           "rfid", "psnr", "ssim", "lpips", "rfid_se", "psnr_se", "ssim_se", "lpips_se", "val_l1",
           "train_steps", "train_flops", "eval_flops", "train_seconds", "eval_seconds", "report_seconds",
           "startup_seconds", "device", "lr_source", "error", "best", "retries", "unit_id", "node_id", "mlflow_run_id")
#: ``lr_source`` is where a trial's phase-2 learning rate came from: searched (its unit's Optuna study), law (the
#: hyperparameter law of the searched widths, ``search.transfer``; the value in ``hp.lr``) or spec (phase2.lr).
#: Float columns (NaN where unknown); report_seconds and startup_seconds are what orchestration cost the
#: trial (the time training waited in tune.report, and a new actor process's age when the trial began).
#: ``<metric>_se`` is a metric's measurement error, its standard error over the evaluation images
#: (rfid_se by bootstrap over the images, the others the standard error of the mean of per-image
#: values); ``train_steps`` and ``train_flops`` are the optimizer steps and model FLOPs of the trial's
#: training, all phases; ``eval_flops`` the model FLOPs of its evaluation's reconstructions (encoder when it
#: runs, fusion, decoder; not the FID Inception), NaN for a trial not evaluated (``model.cost``). Tables
#: written before these columns existed lack them: the analysis then claims nothing about measurement error.
#: ``device`` (text) is what the trial ran on: the GPU's name and count, or the CPU's model and threads.
NUMERIC = ("rfid", "psnr", "ssim", "lpips", "rfid_se", "psnr_se", "ssim_se", "lpips_se", "val_l1",
           "train_steps", "train_flops", "eval_flops", "train_seconds", "eval_seconds", "report_seconds",
           "startup_seconds")
#: The suffix of a metric's measurement-error column: ``rfid`` -> ``rfid_se``.
SE_SUFFIX = "_se"
#: The columns that hold a metric's measurement error, and the training-cost columns.
MEASUREMENT_ERRORS = ("rfid_se", "psnr_se", "ssim_se", "lpips_se")
COSTS = ("train_steps", "train_flops", "eval_flops")
#: The training-cost columns a law can be drawn against (``drorae fit --x train_flops``; the report's cost panel
#: is over the first), and that ``drorae predict --target-rfid`` maps a capacity to.
COST_AXES = ("train_flops", "train_seconds")
#: The rows' order in the written table.
SORT_BY = ("kind", "fused_layers", "params", "seed", "trial_id")
HP_PREFIX = "hp."  # a searched hyperparameter's column (and MLflow param): hp.<name>
#: Where a trial's learning rate came from (a column of tables written since issue 16): ``searched`` (a
#: trial of the unit's Optuna study), ``law`` (one trial at the hyperparameter law's value, transferred
#: from the searched widths) or ``spec`` (the spec's own value). The hyperparameter law fits only
#: searched trials (analysis.hparams).
LR_SOURCE = "lr_source"
SEARCHED, LAW, SPEC = "searched", "law", "spec"
LR_SOURCES = (SEARCHED, LAW, SPEC)
#: The parquet file's key-value metadata: JSON of what holds for every row (the splits; why the sweep ended).
METADATA_KEY = b"drorae"

# --- MLflow ----------------------------------------------------------------------------------
# A sweep is an MLflow experiment with one parent run (the whole spec as params); each trial is a
# run nested under it, tagged with its ids, its params the trial's config, its metrics the table's.

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag for a nested run
RUN_NAME_TAG = "mlflow.runName"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
SWEEP_TAG = "sweep"  # on the parent run: the sweep's name
#: The tags of a trial's run that are table columns; a trial's run is found by its trial_id tag.
TRIAL_ID_TAG = "trial_id"
TRIAL_TAGS = (TRIAL_ID_TAG, "point_id", "kind")
BEST_TAG = "best"  # "true" on a searched point's evaluated (best) trial
ERROR_TAG = "error"  # a failed trial's error line
#: "pruned" on a pruned trial's run: its run is FINISHED (as a completed one's), its val_l1 a partial value
STATUS_TAG = "status"
DEVICE_TAG = "device"  # what the trial ran on (the table's device column)
#: A trial's final metrics on its run (at step 0, besides the curves); ``params`` is logged as a metric too.
FINAL_METRICS = ("rfid", "psnr", "ssim", "lpips", "rfid_se", "psnr_se", "ssim_se", "lpips_se", "val_l1",
                 "train_steps", "train_flops", "eval_flops", "train_seconds", "eval_seconds")
#: The run status of a trial in a terminal state, and the table status a run's status reads back as (a
#: pruned trial's run is FINISHED, and reads back as completed).
RUN_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}
TABLE_STATUS = {"FINISHED": "completed", "FAILED": "failed"}


def se_column(metric: str) -> str:
    """The column of ``metric``'s measurement error (``rfid`` -> ``rfid_se``), for any table's metric."""
    return metric + SE_SUFFIX
