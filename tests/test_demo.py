"""`qlite demo` is the README's first command: it runs end to end and shows the gain it claims."""
import re
import subprocess
import sys


def test_demo_runs_end_to_end_and_training_wins_back_what_compression_costs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qlite", "demo", "--workdir", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rows = {}
    system = r"flat search \(float32\)|IVF-PQ 64x, untrained|IVF-PQ 64x, trained.*?"
    for line in r.stdout.splitlines():
        m = re.match(rf"\s+({system})\s+([01]\.\d{{4}})\s", line)
        if m:
            rows[m.group(1).split(" (run")[0]] = float(m.group(2))
    flat, before, after = rows["flat search (float32)"], rows["IVF-PQ 64x, untrained"], rows["IVF-PQ 64x, trained"]
    # recorded: flat 0.758, IVF-PQ 0.748 untrained, 0.787 trained (100 test claims, 1,200 abstracts)
    assert before < flat  # compression costs something ...
    assert after >= before + 0.02, r.stdout  # ... and training wins back more than that
    assert "64x compression cost" in r.stdout and "memory" in r.stdout and "64x smaller" in r.stdout
    assert (tmp_path / "demo.qlite.h5").exists() and (tmp_path / "demo.qlite.ivfpq.h5").exists()
