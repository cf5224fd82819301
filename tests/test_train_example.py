"""examples/train_torch.py trains, crashes, resumes from its checkpoint and matches the
uninterrupted run, in a small configuration."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the training example needs torch: pip install torch==2.13.0")

pytestmark = pytest.mark.timeout(110)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_torch.py")


def run_example(*args, timeout=90):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, environment.get("PYTHONPATH")]))
    process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=environment)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return process.returncode, out, err


def test_resumed_training_sees_the_batches_of_the_uninterrupted_run():
    code, out, err = run_example("--images", "18", "--size", "24", "--batch-size", "4",
                                 "--steps", "9", "--checkpoint-at", "3", "--crash-at", "6",
                                 "--workers", "2", "--resume-workers", "1")
    assert code == 0, out + err
    assert "crashed at step 6" in out
    assert "batches of steps 4-9 equal the uninterrupted run's: yes" in out
    assert "final weights equal the uninterrupted run's: yes" in out


def test_inconsistent_steps_are_refused():
    code, _, err = run_example("--checkpoint-at", "5", "--crash-at", "4", timeout=60)
    assert code == 2
    assert "--checkpoint-at < --crash-at" in err
