"""The README's Python API section is run as written."""
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_runs(tmp_path, capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md (Python API)", "exec"), {})
    finally:
        os.chdir(old)
    out = capsys.readouterr().out
    assert "untrained" in out and "mine" in out  # the eval table of every run
    assert (tmp_path / "demo.qlite.runs" / "mine" / "run.h5").is_file()
