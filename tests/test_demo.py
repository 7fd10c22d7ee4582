"""`qlite demo` is the README's first command: it must run end to end on the bundled sample."""
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qlite", "demo", "--workdir", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = {(line.split()[0], line.split()[-4]): float(line.split()[-2]) for line in lines
            if line.strip().startswith(("flat", "ivfpq"))}
    assert rows[("flat", "untrained")] > 0.8  # the sample's claims against its abstracts
    assert rows[("ivfpq", "default")] >= rows[("ivfpq", "untrained")] - 0.02, r.stdout
    assert "trained run 'default'" in r.stdout and "kept step" in r.stdout and "64x smaller" in r.stdout
    assert (tmp_path / "demo.qlite.h5").exists() and (tmp_path / "demo.qlite.ivfpq.h5").exists()
