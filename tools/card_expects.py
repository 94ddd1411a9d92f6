"""Write ``expects`` (issue 19: what the training movie held) into the shipped models' cards.

The shipped models were trained before the card had the field. Their training movies are the
project's simulated ones (``training.frames_file`` in each card, all 120 frames of 128 x 128,
seed 1), which ``livedenoise.sim`` makes again bit for bit; :func:`estimate_content` of that
movie is what ``train`` now stores. Only the card changes: the graph and weights stay as they are.

    python tools/card_expects.py # rewrites livedenoise/models/*.onnx in place
    python tools/card_expects.py --check    # prints each card's expects, writes nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "livedenoise" / "models"
sys.path.insert(0, str(ROOT))  # a release tool run as a script, as tools/ship_models.py
# training.frames_file -> the simulate-movie dose that made it (docs/training.md)
DOSES = {"sim_dose300_seed1.tif": 300.0, "sim1.tif": 300.0, "sim_dose100_seed1.tif": 100.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="print, write nothing")
    args = ap.parse_args(argv)

    import onnx

    from livedenoise.analysis import estimate_content
    from livedenoise.engine import METADATA_KEY, ModelCard
    from livedenoise.sim import SimConfig, simulate_movie
    from trainer.export import with_card

    for path in sorted(MODELS.glob("*.onnx")):
        model = onnx.load(str(path))
        card = ModelCard.from_json(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
        source = card.training["frames_file"]
        shape = card.training["frame_shape"]
        cfg = SimConfig(size=shape[0], frames=card.training["frames_used"], dose=DOSES[source], seed=1)
        content = estimate_content(simulate_movie(cfg).noisy, card.pixel_size_nm)
        print(f"{path.name}: {source} -> {content.describe()}")
        if not args.check:
            new = dataclasses.replace(card, expects=content.to_dict())
            path.write_bytes(with_card(model.SerializeToString(), new))


if __name__ == "__main__":
    main()
