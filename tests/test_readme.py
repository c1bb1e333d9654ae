"""The README's quick start runs exactly as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start_runs(tmp_path, monkeypatch, capsys):
    code = quick_start()
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.final["nonzeros"] < 0.35 * result.baseline["nonzeros"]
    assert result.final["accuracy"] >= result.baseline["accuracy"] - 0.05
    assert (tmp_path / "out" / "digits" / "manifest.json").is_file()
    assert "baseline" in capsys.readouterr().out


def test_readme_names_the_two_commands_and_the_test_command():
    text = README.read_text()
    assert "make demo" in text and "make test" in text and "pytest" in text
