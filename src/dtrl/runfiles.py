"""The names of the files a run directory holds: one owner, so a reader and the writer never disagree.

    out_dir/
      config.yaml       the resolved training config (RUN_CONFIG_FILE)
      metrics.jsonl     one JSON line of metrics per logged step (METRICS_FILE)
      eval.json         the final evaluation (EVAL_FILE)
      run_info.json     versions and command of the latest (re)start (RUN_INFO_FILE)
      calibration.json  `dtrl calibrate`'s report (CALIBRATION_FILE)
      val_episodes.json the held-out episodes of a run with val_fraction (VAL_FILE)
      tb/               TensorBoard events (TENSORBOARD_DIR)
      quickstart.json   `dtrl quickstart`'s verdict (QUICKSTART_FILE)
      finetune.yaml, finetune.json  a `dtrl finetune` run's settings and report
      checkpoints/step_N/{config.json, model.safetensors, train_state.pt}, latest, best.json

Plain strings only: plotting a run must not import torch.
"""

RUN_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
RUN_INFO_FILE = "run_info.json"
CALIBRATION_FILE = "calibration.json"
VAL_FILE = "val_episodes.json"
TENSORBOARD_DIR = "tb"
QUICKSTART_FILE = "quickstart.json"
FINETUNE_CONFIG_FILE = "finetune.yaml"
FINETUNE_REPORT_FILE = "finetune.json"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
BEST_FILE = "best.json"
"""In ``checkpoints/``: the checkpoint with the lowest val/loss so far (runs with val_fraction set)."""
EXPORTED_CONFIG_FILE = "train_config.yaml"
"""The run's config.yaml, as copied beside an exported policy by ``dtrl export``."""
RUN_CONFIG_FIX = "restore it, or train again into a new out_dir"
"""What to do about a run's damaged config.yaml."""
