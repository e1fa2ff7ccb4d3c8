"""The command line: every command answers --help; the package imports light and clean."""

import subprocess
import sys

import click
import pytest

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
