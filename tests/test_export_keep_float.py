"""``keep_float`` through the exporters: names checked before any work, ``auto`` recorded in the sidecar."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import require_module

import hrvit_mobile
from hrvit_mobile.cli import main
from hrvit_mobile.exporters import ExportError, ExportSpec, export, read_sidecar
from hrvit_mobile.weights import load_recipe_weights

require_module("executorch")

SIZE = (32, 32)


def _nano(broken: bool = False) -> torch.nn.Module:
    model = load_recipe_weights(hrvit_mobile.create_model("hrvit_nano", num_classes=3, img_size=SIZE))
    deployed = hrvit_mobile.deploy(model.eval(), img_size=SIZE)
    if broken:
        conv = next(m for m in deployed.get_submodule("features.3.branches.1").modules()
                    if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight[0] *= 300.0
    return deployed


def test_unknown_group_name_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    spec = ExportSpec(target="executorch", bits=8, img_size=SIZE, num_classes=3, out_dir=tmp_path,
                      keep_float="features.3.branch.9", calib_samples=2)
    with pytest.raises(ExportError, match=r"no module named features.3.branch.9; module groups") as e:
        export(_nano(), spec)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_keep_float_on_a_post_conversion_variant_is_refused_by_the_cli(tmp_path: Path, capsys) -> None:
    code = main(["export", "--target", "coreml", "--bits", "8", "--model", "hrvit_nano",
                 "--img-size", "32x32", "--num-classes", "3", "--keep-float", "stem", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--keep-float applies to int8-activation exports" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_keep_float_auto_export_reports_the_groups_kept(tmp_path: Path) -> None:
    spec = ExportSpec(target="executorch", bits=8, img_size=SIZE, num_classes=3, out_dir=tmp_path,
                      keep_float="auto", calib_samples=4)
    report = export(_nano(broken=True), spec)
    quant = read_sidecar(report.artifact.path)["details"]["quantization"]
    auto = quant["keep_float_auto"]
    assert auto["target_met"] and "features.3.branches.1" in quant["keep_float"]
    assert auto["final"]["cosine"] >= 0.98 > auto["trail"][0]["cosine"]
    assert report.ok
