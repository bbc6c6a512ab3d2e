"""Multi-device training: MirroredStrategy over two logical CPU devices, mixed precision."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import miscore
    from miscore.pipeline.training import train

    root = sys.argv[1]
    plugins = miscore.PluginManager()
    miscore.synthesize(root + "/data", cases=4, shape=(16, 16, 16), classes=2, plugins=plugins)
    config = miscore.parse_config({
        "data": {"classes": 2},
        "preprocessing": ["zscore"],
        "patching": {"mode": "random", "patch_shape": [16, 16, 16]},
        "model": {"architecture": {"name": "unet", "filters": 4, "depth": 2}, "loss": "dice"},
        "training": {"epochs": 2, "batch_size": 2, "distribute": "mirrored",
                     "devices": ["/cpu:0", "/cpu:1"], "mixed_precision": True},
        "cache": {"path": root + "/cache"},
    })
    result = train(config, root + "/data", root + "/model", plugins=plugins)
    model = miscore.load_model(root + "/model", plugins=plugins)
    label = model.predict(root + "/data/imagesTr/case_000_0000.nii.gz")
    print("EPOCHS", result.epochs, "LABEL", label.array.shape)
    """
)


def test_mirrored_training_on_two_logical_devices_with_mixed_precision(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributing over 2 devices (MirroredStrategy)" in result.stderr
    assert "EPOCHS 2 LABEL (16, 16, 16, 1)" in result.stdout
    assert (tmp_path / "model" / "model.keras").is_file()
    header = (tmp_path / "model" / "history.tsv").read_text().splitlines()[0].split("\t")
    assert "dice_inference" in header  # predicted by a direct call under the strategy
    assert "dice_training_mode" not in header  # per-device variables: left out
