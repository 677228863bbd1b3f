"""The trainer's up-front data check is exact: it finds a rank starved in a late epoch, not only early ones."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.reader import FaceReader, ReaderConfig
from tests.pipeline.shard_builders import make_dataset
from training.config import TrainConfig
from training.guards import check_enough_data


@pytest.fixture(scope="module")
def uneven(tmp_path_factory, embed_clip):
    """Shards of 3, 3 and 1 samples: with 2 ranks and batch 2, rank 1 starves in any epoch whose order puts
    the 1-sample shard second."""
    from pipeline.embed import main as embed

    ds = make_dataset(tmp_path_factory.mktemp("uneven") / "ds", [["a"] * 3, ["b"] * 3, ["c"]])
    embed(["--dataset", str(ds.root), "--clip-model", str(embed_clip[0]), "--pretrained", str(embed_clip[1]),
           "--no-progress"])  # fmt: skip
    return ds.root


def _reader(root, embed_clip, seed: int) -> FaceReader:
    cfg = ReaderConfig(datasets=(root,), clip_model=str(embed_clip[0]), pretrained=str(embed_clip[1]), seed=seed,
                       batch_size=2, partial_batches=False, rank=0, world_size=2)  # fmt: skip
    return FaceReader(cfg)


def test_a_rank_starved_after_epoch_8_is_found(uneven, embed_clip):
    # a seed whose first starving epoch comes late: the earlier check looked at epochs 0-7 only
    for seed in range(500):
        reader = _reader(uneven, embed_clip, seed)
        starved = [e for e in range(40) if sum(reader.worker_items(e, 1, rank=1)) == 0]
        if starved and starved[0] >= 8:
            break
    else:
        pytest.fail("no seed starves rank 1 late; the data no longer exercises the check")
    first = starved[0]
    steps_before = sum(sum(reader.worker_items(e, 1, rank=1)) for e in range(first))
    cfg = dataclasses.replace(TrainConfig(batch_size=2, num_workers=1), max_steps=steps_before + 1)
    with pytest.raises(ValueError, match=f"process 1 gets no full batch of 2 in epoch {first} "):
        check_enough_data(reader, cfg, world=2)
    # a run that ends before that epoch is fine
    check_enough_data(reader, dataclasses.replace(cfg, max_steps=steps_before), world=2)
