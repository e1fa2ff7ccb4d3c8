"""The command line: every command answers --help; the package imports light and clean."""

import subprocess
import sys

import click
import pytest
from processes import as_from_a_terminal

from cityscapes_lab.cli import cli, main


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


@pytest.mark.parametrize("path", [()] + list(all_commands(cli)), ids=lambda p: " ".join(p) or "cityscapes-lab")
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    assert "Usage:" in capsys.readouterr().out


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "cityscapes_lab", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "cityscapes-lab" in result.stdout


def test_import_is_light_and_reads_nothing(tmp_path):
    """Importing the package loads no torch and opens no file of the working directory; its one setting is the
    huge-page default of PyTorch's CPU allocator, which a user's own value overrides."""
    code = ("import sys, cityscapes_lab; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'cityscapes_lab.data.prepare' not in sys.modules; "
            "import os; print(os.environ['THP_MEM_ALLOC_ENABLE'])")
    for env, expected in (({}, "1"), ({"THP_MEM_ALLOC_ENABLE": "0"}, "0")):
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", **env})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected
    assert list(tmp_path.iterdir()) == []


def test_core_dependencies_exclude_heavy_frameworks():
    from importlib.metadata import requires

    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
             for r in requires("cityscapes-lab") if "extra ==" not in r}
    assert not names & {"torchvision", "timm", "segmentation-models-pytorch", "lightning", "torchmetrics"}
    assert {"torch", "numpy", "pillow", "opencv-python-headless", "cityscapesscripts", "click"} <= names


@pytest.mark.parametrize("path", [[], ["zoo"], ["config"]], ids=["cityscapes-lab", "zoo", "config"])
def test_a_group_without_a_command_prints_its_help(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(path)
    captured = capsys.readouterr()
    assert exited.value.code == 0 and captured.err == ""
    assert captured.out.startswith("Usage: ") and "Commands:" in captured.out and captured.out.count("\n") > 5


def test_ctrl_c_says_how_to_continue_and_exits_130(tmp_path):
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "cityscapes_lab", "synth", str(tmp_path / "raw"), "--train",
                                "200", "--val", "0", "--test", "0", "--size", "1024x512", "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 60
    while not (tmp_path / "raw.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; run the same command again to continue where it stopped"
    assert "Traceback" not in err and not (tmp_path / "raw").exists()


def _readme_api_script() -> str:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]


@pytest.mark.parametrize("first", ["", "import torch\n"], ids=["as-written", "torch-loaded-first"])
def test_the_readme_api_example_runs_as_a_plain_script(first, tmp_path):
    """No ``__main__`` guard needed: workers never re-run the script, whether forked (nothing loaded yet) or
    started fresh (torch already loaded)."""
    script = tmp_path / "api.py"
    script.write_text(first + _readme_api_script())
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:3] == ["paper (112, 64) 35", "5 4", "680755"] and "unet_paper" in lines[3]
