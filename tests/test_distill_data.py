"""Training data: damaged samples and cut-short shards are skipped and counted, in a fixed order."""

import io

import numpy as np
import pytest
from PIL import Image

from snapdistill.distill.data import ShardPairs
from snapdistill.errors import SnapdistillError
from snapdistill.manifest import write_manifest


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _shards(folder, *, good: int, no_jpg: int = 0, truncated: bool = False) -> list[str]:
    """`good` readable samples in shards of 8 (captions "n"), `no_jpg` samples with only a caption, and
    optionally a shard cut short in the middle of its 4th sample."""
    import webdataset as wds

    folder.mkdir()
    for shard in range((good + 7) // 8):
        with wds.TarWriter(str(folder / f"s-{shard:06d}.tar")) as sink:
            for i in range(shard * 8, min(good, shard * 8 + 8)):
                sink.write({"__key__": f"{i:06d}", "jpg": _jpeg(i), "txt": str(i)})
    with wds.TarWriter(str(folder / "s-bad.tar")) as sink:
        for i in range(no_jpg):
            sink.write({"__key__": f"x{i:06d}", "txt": f"x{i}"})
        if truncated:
            for i in range(1000, 1006):
                sink.write({"__key__": f"{i:06d}", "jpg": _jpeg(i), "txt": str(i)})
    if truncated:
        data = (folder / "s-bad.tar").read_bytes()
        cut = data.index(b"001003.jpg") + 700
        (folder / "s-bad.tar").write_bytes(data[:cut])
    write_manifest(folder, stage="build-data", config={}, outputs={"shards": sorted(p.name for p in folder.glob("*.tar"))})
    return sorted(str(p) for p in folder.glob("*.tar"))


def _epoch_captions(shards: list[str], epoch: int = 0) -> list[str]:
    return [caption for _, caption in ShardPairs(shards, size=8, seed=3)._epoch(epoch)]


def test_damaged_samples_are_skipped_counted_once_per_epoch_in_a_fixed_order(tmp_path, capsys):
    shards = _shards(tmp_path / "s", good=40, no_jpg=1, truncated=True)
    first = _epoch_captions(shards)
    # Every readable sample once: the 40 good ones and the 3 whole samples before the cut.
    assert sorted(first, key=int) == [str(i) for i in range(40)] + ["1000", "1001", "1002"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training samples unreadable in epoch 0" in err, err
    assert "no jpg member" in err or "s-bad.tar" in err
    assert _epoch_captions(shards) == first  # the same order again (resume relies on it)
    assert capsys.readouterr().err == err
    pixels, captions = next(ShardPairs(shards, size=8, seed=3).batches(4, skip=2))
    assert pixels.shape == (4, 3, 8, 8) and captions == first[2:6]


def test_more_than_a_tenth_unreadable_stops_with_one_line(tmp_path):
    shards = _shards(tmp_path / "s", good=8, no_jpg=4)
    with pytest.raises(SnapdistillError, match=r"4 of 12 training samples unreadable in epoch 0 .*more than 10%"):
        next(ShardPairs(shards, size=8).batches(2))


def test_distill_on_mostly_unreadable_shards_is_one_line(tmp_path, cli, tiny_eps_dir):
    _shards(tmp_path / "s", good=2, no_jpg=6)
    code, _, err = cli("distill-steps", "--teacher", tiny_eps_dir, "--shards", tmp_path / "s", "--out", tmp_path / "o",
                       "--max-steps", 1, "--batch-size", 2, "--from", 4, "--to", 2)
    assert code == 2 and err.count("\n") == 1 and "6 of 8 training samples unreadable" in err, err
