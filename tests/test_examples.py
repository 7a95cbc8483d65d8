"""The examples run as a reader would run them: the real file, in a fresh process."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_one_step_pretrains_transfers_and_finetunes():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "one_step.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    pre = float(re.fullmatch(r"pre-training loss (\S+)", lines[0]).group(1))
    assert math.isfinite(pre) and pre > 0
    # every encoder tensor copied; only the head is new; the restorer's decoder is dropped
    assert re.fullmatch(
        r"transfer: \d+ tensors copied; new: head.weight, head.bias; "
        r"dropped: decoder\.\* \(\d+\)",
        lines[1],
    ), lines[1]
    # a fresh head starts at uniform logits: cross-entropy ln(10) over the 10 classes
    ft = float(re.fullmatch(r"fine-tuning loss (\S+)", lines[2]).group(1))
    assert abs(ft - math.log(10)) < 1e-3
