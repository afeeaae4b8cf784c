"""The shipped models' figures that the README and the model card state stay inside their stated 95% intervals.

The README's table gives, for the test split (2,092 faces; flagship v14 never trained on any of them, scored once
when it shipped), the int8 default's age MAE 4.97 (4.76 to 5.20) and gender 92.6% (91.5 to 93.7), and the float32
model's 4.96 (4.75 to 5.19) and 92.5% (91.3 to 93.6), flip-averaged. A change to decoding, preprocessing, the
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
    "flagship-int8": ((4.76, 5.20), (0.915, 0.937)),
    "flagship": ((4.75, 5.19), (0.913, 0.936)),
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
