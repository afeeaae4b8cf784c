"""Label vocabulary shared by every reader, model and report.

Age groups are the eight Adience groups. Ages in years that fall in the gaps between groups (3, 7, 14, 21-24,
33-37, 44-47, 54-59) go to the group whose nearest edge is closest, ties to the older group:

>>> [AGE_GROUPS[age_to_group(a)] for a in (3, 22, 23, 35, 45, 46, 56, 57)]
['4-6', '15-20', '25-32', '38-43', '38-43', '48-53', '48-53', '60+']
>>> group_midpoint(age_to_group(30))
28.5
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from typing import Any

import numpy as np

AGE_GROUPS: tuple[str, ...] = ("0-2", "4-6", "8-13", "15-20", "25-32", "38-43", "48-53", "60+")
#: Inclusive (low, high) bounds of each group in years; the last group is open, 100 stands for its top.
AGE_GROUP_BOUNDS: tuple[tuple[int, int], ...] = (
    (0, 2), (4, 6), (8, 13), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100),
)
NUM_AGE_GROUPS = len(AGE_GROUPS)
MAX_AGE = 100  # ages above are clipped to this for age-distribution heads

#: Gender codes follow UTKFace: 0 male, 1 female. Models predict P(female).
GENDERS: tuple[str, ...] = ("male", "female")
MALE, FEMALE = 0, 1
#: How a gender label may be written (case aside) wherever people write one: manifests, ``data.filter``, Adience.
GENDER_WORDS: dict[str, int] = {"male": MALE, "m": MALE, "0": MALE, "female": FEMALE, "f": FEMALE, "1": FEMALE}
#: The code and the name of a gender prediction whose P(female) is exactly 0.5: neither class is chosen (the int8
#: model's quantised, flip-averaged outputs can land there); metrics count such a face as half right.
GENDER_TIE, TIE_NAME = -1, "unknown"


def gender_code(text: str) -> int | None:
    """The gender code of a label as people write it (:data:`GENDER_WORDS`); None for anything else (Adience's
    ``u``, blank).

    >>> gender_code(" F"), gender_code("Male"), gender_code("u")
    (1, 0, None)
    """
    return GENDER_WORDS.get(str(text).strip().lower())


def gender_codes(female_prob: Any) -> np.ndarray:
    """Predicted gender per face: FEMALE above 0.5, MALE below, GENDER_TIE at exactly 0.5 (a rule that favours
    neither class).

    >>> gender_codes([0.2, 0.5, 0.9]).tolist()
    [0, -1, 1]
    """
    p = np.asarray(female_prob, dtype=np.float64)
    return np.where(p > 0.5, FEMALE, np.where(p < 0.5, MALE, GENDER_TIE)).astype(np.int64)


def gender_name(code: int) -> str:
    """``male``, ``female`` or ``unknown`` (a tie)."""
    return TIE_NAME if code == GENDER_TIE else GENDERS[code]

#: UTKFace's race codes (0..4), which manifests use too.
RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "others")
#: The oldest age a label may give: an older one is a typo (UTKFace's oldest is 116).
MAX_LABEL_AGE = 130


#: Where each group hands over to the next: halfway between its top and the next group's bottom, so that an age in
#: a gap goes to the group of the nearest edge, and an age exactly halfway to the older group.
GROUP_THRESHOLDS: tuple[float, ...] = tuple((hi + lo) / 2 for (_, hi), (lo, _) in pairwise(AGE_GROUP_BOUNDS))


def age_to_group(age: float) -> int:
    """Index of the Adience group for an age in years (gap policy: nearest group edge, ties to the older)."""
    if not (math.isfinite(age) and age >= 0):
        raise ValueError(f"age must be a number of years, 0 or more, got {age}")
    return int(np.searchsorted(GROUP_THRESHOLDS, age, side="right"))


def ages_to_groups(ages: Any) -> np.ndarray:
    """:func:`age_to_group` of every age at once (negative ages count as 0), without a loop per face.

    >>> ages_to_groups([0.0, 3.0, 36.9, 57.2, 99.0]).tolist()
    [0, 1, 5, 7, 7]
    """
    return np.searchsorted(GROUP_THRESHOLDS, np.maximum(np.asarray(ages, dtype=np.float64), 0.0),
                           side="right").astype(np.int64)


def group_midpoint(group: int) -> float:
    """Midpoint in years of an age group, the age a group-only label stands for (60+ counts as 60-75)."""
    lo, hi = AGE_GROUP_BOUNDS[group]
    if group == NUM_AGE_GROUPS - 1:
        hi = 75
    return (lo + hi) / 2


def group_of_label(label: str) -> int:
    """Index of an age-group label such as ``"25-32"``."""
    try:
        return AGE_GROUPS.index(label)
    except ValueError:
        raise ValueError(f"unknown age group {label!r}; expected one of {', '.join(AGE_GROUPS)}") from None


# Seed 001, section 2.1, Table 0: Adience age strings that are not one of the 8 groups, mapped to a group.
ADIENCE_CLEANING: dict[str, int] = {
    "2": 0, "3": 0,
    "(8, 23)": 2, "13": 2,
    "22": 3,
    "23": 4, "(27, 32)": 4, "29": 4, "32": 4, "34": 4,
    "(38, 42)": 5, "(38, 48)": 5, "35": 5, "36": 5, "42": 5, "45": 5,
    "46": 6, "56": 6,
    "55": 7, "57": 7, "58": 7,
}
_ADIENCE_GROUP_STRINGS = {
    "(0, 2)": 0, "(4, 6)": 1, "(8, 12)": 2, "(15, 20)": 3,
    "(25, 32)": 4, "(38, 43)": 5, "(48, 53)": 6, "(60, 100)": 7,
}
_RANGE = re.compile(r"^\((\d+),\s*(\d+)\)$")


def adience_age_group(value: str) -> int | None:
    """Age group of an Adience ``age`` field, cleaned as seed 001 does; None when it carries no age.

    Values outside both tables fall back to the gap policy: a single age maps directly, a range by its midpoint
    (the typo ``(25, 23)`` is the 25-32 group).

    >>> [adience_age_group(v) for v in ("(25, 32)", "(8, 23)", "35", "(25, 23)", "None", "")]
    [4, 2, 5, 4, None, None]
    """
    value = value.strip()
    if value in _ADIENCE_GROUP_STRINGS:
        return _ADIENCE_GROUP_STRINGS[value]
    if value in ADIENCE_CLEANING:
        return ADIENCE_CLEANING[value]
    if value.isdigit():
        return age_to_group(int(value))
    match = _RANGE.match(value)
    if match:
        lo, hi = int(match[1]), int(match[2])
        if hi < lo:  # typos such as "(25, 23)" name the group by its lower bound
            return age_to_group(lo)
        return age_to_group((lo + hi) / 2)
    return None
