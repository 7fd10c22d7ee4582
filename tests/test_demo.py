"""`qlite demo` is the README's first command: it must run end to end on the bundled sample."""
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qlite", "demo", "--workdir", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    flat = next(line for line in r.stdout.splitlines() if line.strip().startswith("flat"))
    ndcg = float(flat.split()[2])
    assert ndcg > 0.8  # the sample's 60 claims against 300 abstracts (0.90 when recorded)
    assert (tmp_path / "demo.qlite.h5").exists()
