"""Where did today's train/val/test faces sit in the split an older revision of the code made?

A model trained on an older split has seen some of today's validation and test faces. This rebuilds the older
split with that revision's own ``data/dedup.py`` and ``data/splits.py`` (read with ``git show``, run from a temporary
folder on the same records), prints the overlap, and writes CSV manifests (``agegender evaluate --data manifest
--root FILE --split all`` reads them) of today's faces that the older split did NOT train on:
``unseen_val.csv``, ``unseen_test.csv``, and the older split's own ``old_val.csv`` (the faces the older model was
chosen and calibrated on). The manifests hold paths into the shared data: keep them out of the repository.

    python scripts/measure/split_overlap.py --rev e1618da --out ../runs/split_overlap
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from agegender.data.datasets import DataConfig, dataset_splits, read_dataset
from agegender.data.manifest import write_manifest
from agegender.data.splits import SPLITS

REPO = Path(__file__).resolve().parents[2]


def old_splits(rev: str) -> dict[str, list]:
    """The split the revision ``rev`` makes of today's records (its dedup and split modules, our readers)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("dedup", "splits"):
            source = subprocess.run(["git", "show", f"{rev}:src/agegender/data/{name}.py"], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout
            (folder / f"old_{name}.py").write_text(source.replace("from agegender.data.dedup import",
                                                                  "from old_dedup import"))
        sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.spec_from_file_location("old_splits", folder / "old_splits.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules["old_splits"] = module  # dataclasses look their module up while the class is made
            spec.loader.exec_module(module)
            splits, _ = module.load_or_make_splits(read_dataset(DataConfig()), folder / "splits", progress=False)
        finally:
            sys.path.remove(str(folder))
            sys.modules.pop("old_dedup", None)
            sys.modules.pop("old_splits", None)
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision whose split a model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="folder for the manifests (outside the repo)")
    args = parser.parse_args()
    old = old_splits(args.rev)
    where = {r.path: name for name, records in old.items() for r in records}
    new = dataset_splits(DataConfig(), progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        counts = Counter(where.get(r.path, "not in it") for r in new[name])
        print(f"today's {name} ({len(new[name])} faces), in the split of {args.rev}: "
              + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        if name != "train":
            unseen = [r for r in new[name] if where.get(r.path) != "train"]
            write_manifest(unseen, args.out / f"unseen_{name}.csv")
            print(f"  wrote {args.out / f'unseen_{name}.csv'}: {len(unseen)} faces the older train split did not hold")
    write_manifest(old["val"], args.out / "old_val.csv")
    print(f"wrote {args.out / 'old_val.csv'}: the older split's validation faces ({len(old['val'])})")


if __name__ == "__main__":
    main()
