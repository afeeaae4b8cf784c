"""The one statement of every registered model's ``ModelConfig``, and the module that builds it; no torch.

The registry lists models and answers ``get_config`` from here without importing a network's module (so
``agegender models`` answers at once); each model module takes its configs from here and registers its builder
for them, and ``create_model`` imports that module on first use.
"""

from __future__ import annotations

from typing import Any

from agegender.model_config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

# --- flagship ------------------------------------------------------------------------------------------------

FLAGSHIP = ModelConfig(
    "flagship", input_size=64, resize=72, outputs=("age_dist_logits", "gender_logit"),
    source="agegender flagship (its shape from model_args; by default v1's, 1.58 M; the shipped v18: blocks 1-1-2-1, "
           "linear resampling)",
)

# --- levi_hassner: seed 000 §3.1 and seed 001's ablations and joint heads --------------------------------------

#: Per-channel means of ``mean.binaryproto`` (BGR 78.43, 87.77, 114.90), in RGB order; Caffe does not scale.
MEAN_RGB = (114.8958, 87.7689, 78.4263)
PROTOTXT = "peers/levi_hassner_2015/deploy_{age,gender}.prototxt"


def lh_config(name: str, outputs: tuple[str, ...], source: str, **extra: Any) -> ModelConfig:
    """A model fed like Levi & Hassner's: resize to 256, crop 227, subtract the Adience mean, no scaling."""
    return ModelConfig(
        name=name, input_size=227, resize=256, outputs=outputs, mean=MEAN_RGB, std=(1.0, 1.0, 1.0),
        source=source, extra=extra,
    )


_GENDER = ("gender_logit",)
LEVI_HASSNER = (
    lh_config("levi_hassner_age", ("age_group_logits",), f"seed 000 §3.1 (8-way age); {PROTOTXT}"),
    lh_config("levi_hassner_gender", _GENDER, f"seed 000 §3.1 (gender), seed 001 Table 1 model 1; {PROTOTXT}"),
    lh_config("levi_hassner_m2", _GENDER, "seed 001 §3.1 Table 1 model 2 (conv3 removed)", conv_layers=2),
    lh_config(
        "levi_hassner_m3", _GENDER, "seed 001 §3.1 Table 1 model 3 (conv3 and fc7 removed)",
        conv_layers=2, fc_layers=1,
    ),
    lh_config(
        "levi_hassner_m4", _GENDER, "seed 001 §3.1 Table 1 model 4 (conv2, conv3 and fc7 removed)",
        conv_layers=1, fc_layers=1,
    ),
    lh_config("levi_hassner_joint16", ("joint_logits",), "seed 001 §3.3.1 (16 gender x age categories)"),
    lh_config(
        "levi_hassner_twohead", ("age_group_logits", "gender_logit"),
        "seed 001 §3.3.2 (unweighted two-head caffe: mean of the two losses)", gender_weight=1.0,
    ),
    lh_config(
        "levi_hassner_ordinal", ("age_ordinal_logits", "gender_logit"),
        "seed 001 §3.3.3 (weighted caffe, ordinal age encoding of Zhang et al. 2017)",
        ordinal_weights=[1.0, 1.0, 1.0, 1.3, 1.5, 1.5, 1.3, 1.0], gender_weight=9.6,
    ),
)

# --- chained: seed 000 §3.3 and §5, composed of registered Levi & Hassner parts --------------------------------

CHAINED = lh_config(
    "levi_hassner_chained", ("age_group_logits", "gender_logit"),
    "seed 000 §3.3 and §5 (Fig. 3, Table 4): gender net, then male-only and female-only age nets",
    gate_model="levi_hassner_gender", expert_model="levi_hassner_age",
)
AGE_SPECIFIC_GENDER = lh_config(
    "levi_hassner_age_specific_gender", ("age_group_logits", "gender_logit"),
    "seed 000 §5 (Table 3): age net, then one gender net per age group",
    gate_model="levi_hassner_age", expert_model="levi_hassner_gender",
)

# --- resnet: seed 001 §4 (models 9-14) -------------------------------------------------------------------------


def resnet_config(name: str, outputs: tuple[str, ...], source: str, **extra: Any) -> ModelConfig:
    return ModelConfig(
        name=name, input_size=224, outputs=outputs, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=source,
        extra=extra,
    )


_GROUPS = ("age_group_logits", "gender_logit")
_ORDINAL = ("age_ordinal_logits", "gender_logit")
# Models 9-10 (and 11-12) train only "the last 10 layers except output layers": the last 10 parameterised
# trunk layers plus the 2 heads, for ``freezing.freeze_all_but_last(model, 12)``. Models 13-14 train all.
# Table 14: per-threshold age weights, and the gender weight for "the first few epochs" (start) and after;
# the paper gives no epoch for the switch.
RESNET_ORDINAL_WEIGHTS = [1.0, 1.0, 1.0, 1.3, 1.8, 1.8, 1.3, 1.0]
RESNET = (
    resnet_config("resnet34_attributes", ("attributes",),
                  "seed 001 §4.1 (pre-training on CelebA's 40 attributes, from which models 9-12 start)"),
    resnet_config("resnet34_multitask", _GROUPS, "seed 001 §4.1 (model 9)", trainable_last=12),
    resnet_config("resnet34_se_multitask", _GROUPS, "seed 001 §4.2 (model 10)", se=True, trainable_last=12),
    resnet_config(
        "resnet34_ordinal", _ORDINAL, "seed 001 §4.3, Tables 14-15 (models 11 and 13)",
        ordinal_weights=RESNET_ORDINAL_WEIGHTS, gender_weight_start=4.0, gender_weight=0.9,
    ),
    resnet_config(
        "resnet34_se_ordinal", _ORDINAL, "seed 001 §4.3, Tables 14-15 (models 12 and 14, SE block)",
        se=True, ordinal_weights=RESNET_ORDINAL_WEIGHTS, gender_weight_start=2.0, gender_weight=0.5,
    ),
)

# --- two_branch: seed 003's UTKFace networks -------------------------------------------------------------------

UTK_MODEL_A = ModelConfig(
    name="utk_model_a", input_size=128, outputs=("age", "gender_logit"), paper_params=1_015_906,
    source="seed 003 §2 (Model A, custom two-branch CNN); parameter count §4",
)
# §3: loss 1.0 * age + 10.0 * gender. The VGG-16 base is frozen for 5 epochs: only the 10 parameterised
# layers of the branches train (``freezing.freeze_all_but_last(model, 10)``), the trainable count of §4.
# Then its last 2 blocks are unfrozen, 8 Keras layers of which 6 are convs: ``unfreeze_last(model, 16)``.
UTK_MODEL_B = ModelConfig(
    name="utk_vgg16", input_size=128, outputs=("age", "gender_logit"), mean=IMAGENET_MEAN,
    std=IMAGENET_STD, paper_params=1_449_474,
    source="seed 003 §3 (Model B, VGG-16 with gradual unfreezing); parameter count §4",
    extra={"gender_weight": 10.0, "trainable_last": 10, "unfreeze": [[5, 16]]},
)

# --- vu: seed 004 ----------------------------------------------------------------------------------------------

VU = ModelConfig(
    name="vu_multitask", input_size=64, outputs=("age", "gender_logit"), paper_params=0.9e6,
    source="seed 004 §III-B Table I (architecture), §III-C (loss, init), Table III (0.9M parameters)",
)

# --- zhu: seed 002 ---------------------------------------------------------------------------------------------


def zhu_config(name: str, outputs: tuple[str, ...], conv_layers: int, source: str) -> ModelConfig:
    # §3.1: "only 6 x 10^6 parameters" for the 4-conv net, which single-4conv shares (§4.3).
    return ModelConfig(
        name=name, input_size=64, outputs=outputs, source=source, extra={"conv_layers": conv_layers},
        paper_params=6e6 if conv_layers == 4 else None,
    )


ZHU = (
    zhu_config("zhu_lightweight", ("age", "gender_logit"), 4, "seed 002 §3.1-3.2 (joint regression)"),
    *(
        zhu_config(f"zhu_{task}_{depth}conv", (key,), depth, f"seed 002 §4.3 Table 3 (single-{depth}conv)")
        for task, key in (("age", "age"), ("gender", "gender_logit"))
        for depth in (3, 4, 5, 6)
    ),
)

# --- the catalog -----------------------------------------------------------------------------------------------

#: Module of ``agegender.models`` that registers the builder -> the configs it builds.
BY_MODULE: dict[str, tuple[ModelConfig, ...]] = {
    "flagship": (FLAGSHIP,),
    "levi_hassner": LEVI_HASSNER,
    "chained": (CHAINED, AGE_SPECIFIC_GENDER),
    "resnet": RESNET,
    "two_branch": (UTK_MODEL_A, UTK_MODEL_B),
    "vu": (VU,),
    "zhu": ZHU,
}
#: Model name -> its config.
CONFIGS: dict[str, ModelConfig] = {config.name: config for group in BY_MODULE.values() for config in group}
#: Model name -> the module to import for its builder.
MODULES: dict[str, str] = {
    config.name: f"agegender.models.{module}" for module, group in BY_MODULE.items() for config in group
}
assert len(CONFIGS) == sum(map(len, BY_MODULE.values())), "a model name appears twice in the catalog"
