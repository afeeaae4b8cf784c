"""The shipped models' figures that the README and the model card state stay inside their stated 95% intervals.

The README's table gives, for the test split (2,092 faces; flagship v18 never trained on any of them, scored once
when it shipped), the int8 default's age MAE 4.94 (4.72 to 5.17) and gender 92.4% (91.2 to 93.5), and the float32
model's 4.94 (4.71 to 5.16) and 92.4% (91.3 to 93.5), flip-averaged. A change to decoding, preprocessing, the
calibrations or the shipped files that moves a figure out of its interval fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agegender.data.datasets import decode_split
from agegender.evaluation.evaluate import evaluation_records, face_metrics, load_evaluable, predict_faces
from agegender.inference.onnx_model import shipped_model_path
from agegender.models import config_of

STATED = {  # model: (age MAE interval, gender accuracy interval), README "The shipped model"
    "flagship-int8": ((4.72, 5.17), (0.912, 0.935)),
    "flagship": ((4.71, 5.16), (0.913, 0.935)),
}


@pytest.mark.parametrize("name", STATED)
def test_a_shipped_model_scores_inside_its_stated_interval(name: str, utkface_dir: Path) -> None:
    (mae_low, mae_high), (gender_low, gender_high) = STATED[name]
    model = load_evaluable(shipped_model_path(name))
    records, _ = evaluation_records("utkface", str(utkface_dir), "test", progress=False)
    assert len(records) == 2092, "the split moved: re-measure the README's figures and their intervals"
    data = decode_split(records, config_of(model), progress=False)
    overall = face_metrics(data.records, predict_faces(model, data.images, "flip"))["overall"]
    assert mae_low <= overall["age_mae"] <= mae_high
    assert gender_low <= overall["gender_accuracy"] <= gender_high
