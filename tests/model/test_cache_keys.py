"""Cache keys name what determines a result, not where it lies: a moved cache keeps its keys."""

from dataclasses import replace

import torch

from model import ENCODER_PRESETS
from model.version import code_version


def test_an_encoders_key_follows_its_weights_not_its_files_name_or_place(tmp_path):
    weights = {"w": torch.randn(4, 3), "b": torch.arange(3).to(torch.bfloat16)}
    (tmp_path / "a").mkdir()
    paths = [tmp_path / "a" / "enc.pt", tmp_path / "other-name.pt"]
    for p in paths:
        torch.save(weights, p)
    assert paths[0].read_bytes() != paths[1].read_bytes()  # torch.save names the archive after the file
    cfg = ENCODER_PRESETS["tiny"]
    keys = [replace(cfg, checkpoint=str(p)).hash() for p in paths]
    assert keys[0] == keys[1]
    weights["w"][0, 0] += 1e-3
    torch.save(weights, tmp_path / "changed.pt")
    assert replace(cfg, checkpoint=str(tmp_path / "changed.pt")).hash() != keys[0]
    assert replace(cfg, checkpoint=None).hash() != keys[0]


def test_the_code_version_is_a_digest_of_the_model_sources():
    import hashlib
    from pathlib import Path

    import model

    digest = hashlib.sha1()
    for path in sorted(Path(model.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    assert code_version() == digest.hexdigest()[:16]
