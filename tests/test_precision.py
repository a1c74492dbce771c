"""bf16 on CPUs without native bf16: said in one line, fp32 kept unless the user insists."""

from __future__ import annotations

import json

import pytest

from resprune.cli.main import main
from resprune.measure import _device

TINY = ["--model", "resnet8", "--data", "synthetic", "--batch-size", "64", "--epochs", "1",
        "--epoch-size", "128",
        "--no-progress", "--json", "--precision", "bf16"]


@pytest.mark.parametrize("native,force,want", [(False, False, "fp32"), (False, True, "bf16"),
                                               (True, False, "bf16")])
def test_bf16_on_cpu_without_native_support(monkeypatch, tmp_path, capsys, native, force, want):
    monkeypatch.setattr(_device, "cpu_has_native_bf16", lambda: native)
    argv = ["train", *TINY, "--device", "cpu", "--out", str(tmp_path / "r")]
    code = main(argv + (["--force-bf16"] if force else []))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["config"]["precision"] == want
    warned = [ln for ln in err.splitlines() if "no native bf16" in ln]
    assert len(warned) == (1 if (not native and not force) else 0), err
    if warned:
        assert "training in fp32 (pass --force-bf16 to insist)" in warned[0]


def test_cpu_flags_are_read(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for text, want in (("flags\t: fpu sse avx2\n", False),
                       ("flags\t: fpu avx512f avx512_bf16\n", True),
                       ("Features\t: fp asimd bf16\n", True)):
        info = tmp_path / "cpuinfo"
        info.write_text(text)
        monkeypatch.setattr(builtins, "open", lambda p, *a, _i=info, **k: real_open(
            _i if p == "/proc/cpuinfo" else p, *a, **k))
        assert _device.cpu_has_native_bf16() is want
        monkeypatch.setattr(builtins, "open", real_open)
