import json

import pytest

from edgead.errors import ArtifactError, EdgeadError
from edgead.spec import TOPK_LIMIT, DetectorSpec, PostSpec, top_k_for


def spec(**kw):
    base = dict(family="fbft", backbone="vit_tiny_test_patch14", norm="layernorm", layers=(7, 11), input_size=224)
    base.update(kw)
    return DetectorSpec(**base)


def test_top_k_derived_from_fraction():
    assert spec().top_k == 50  # 0.1 % of 224*224 = 50.2
    assert spec(post=PostSpec(score_fraction=0.01)).top_k == 502
    assert top_k_for(0.001, (10, 10)) == 1


def test_top_k_limit_enforced_when_spec_is_made():
    with pytest.raises(EdgeadError, match=r"between 1 and 3840 \(TensorRT's TopK limit\), found 5018"):
        spec(post=PostSpec(score_fraction=0.1))
    with pytest.raises(EdgeadError, match="found 3841"):
        spec(top_k=TOPK_LIMIT + 1)
    assert spec(top_k=TOPK_LIMIT).top_k == 3840


def test_round_trip_json():
    s = spec(threshold=0.25, resize=(256, 256), head={"hidden": 64})
    again = DetectorSpec.from_json(s.to_json())
    assert again == s


def test_newer_version_refused():
    d = spec().to_dict()
    d["version"] = "99.0.0"
    with pytest.raises(ArtifactError, match=r"written by edgead 99.0.0 .* upgrade edgead"):
        DetectorSpec.from_dict(d)
    d = spec().to_dict()
    d["format"] = 7
    with pytest.raises(ArtifactError, match="spec format 7"):
        DetectorSpec.from_json(json.dumps(d))


def test_bad_fields():
    with pytest.raises(EdgeadError, match="model family must be one of fbft, dinomaly, vitad, .*nf, gmm.*, found 'x'"):
        spec(family="x")
    with pytest.raises(EdgeadError, match="norm must be 'layernorm' or 'dyt', found 'bn'"):
        spec(norm="bn")
    with pytest.raises(EdgeadError, match="smoothing kernel size must be odd"):
        PostSpec(ksize=4)
    with pytest.raises(ArtifactError, match="expected JSON, found unreadable text"):
        DetectorSpec.from_json("{nope")


def test_post_stages_round_trip_and_score_size():
    post = PostSpec(smooth="box", pad="zeros", cascade=[[5, 5], [7, 3]], upsample=[70, 70], crop=(60, 70))
    s = spec(post=post, input_size=56, layers=(7, 11))
    assert s.post.cascade == ((5, 5), (7, 3)) and s.post.upsample == (70, 70)
    assert s.top_k == 4 and s.map_size == (56, 56)  # 0.1 % of the scored 60x70 map; maps stay at the input size
    assert DetectorSpec.from_json(s.to_json()) == s
    assert spec(post=PostSpec(score_fraction=0.01, resize=(256, 256)), input_size=392).top_k == 655


def test_post_stage_errors():
    with pytest.raises(EdgeadError, match="image score must be 'topk_mean' or 'avgpool_max', found 'max'"):
        PostSpec(score="max")
    with pytest.raises(EdgeadError, match="returned map must be 'smoothed' or 'upsampled'"):
        PostSpec(output="raw")
    with pytest.raises(EdgeadError, match="a box cascade needs smooth='box'"):
        PostSpec(cascade=((5, 1),))
    with pytest.raises(EdgeadError, match=r"post crop \(300, 300\) is larger than the map \(224, 224\)"):
        spec(post=PostSpec(crop=(300, 300)))
    assert PostSpec().score == "topk_mean" and PostSpec().output == "smoothed"  # defaults keep old behaviour


def test_tiling_plan_travels_and_marks_the_format():
    from dataclasses import replace

    from edgead.spec import TilePlan

    untiled = spec(input_size=56)
    d = untiled.to_dict()
    assert "tiling" not in d and d["format"] == 1  # untiled specs read as before, in older readers too
    tiled = replace(untiled, tiling=TilePlan(56, 14))
    d = json.loads(tiled.to_json())
    assert d["tiling"] == {"tile": [56, 56], "overlap": 14, "blend": "linear", "score": "topk_mean"}
    assert d["format"] == 2
    assert DetectorSpec.from_json(tiled.to_json()) == tiled
    assert replace(tiled, tiling=None).format == 1
    with pytest.raises(EdgeadError, match="tile size 64x64 must equal the input size 56x56"):
        replace(untiled, tiling=TilePlan(64, 8))
    with pytest.raises(EdgeadError, match="between 0 and half the tile .*found 29"):
        TilePlan(56, 29)
    with pytest.raises(EdgeadError, match="does not tile"):
        spec(input_size=56, post=PostSpec(score="avgpool_max"), tiling=TilePlan(56, 8))
    for bad, match in (({"tile": [56]}, "tiling.tile"), ({"tile": [56, 56], "overlap": "8"}, "tiling.overlap"),
                       ([56], "expected 'tiling' as null or an object"),
                       ({"tile": [56, 56], "overlap": 40}, "half the tile")):
        d = json.loads(tiled.to_json())
        d["tiling"] = bad
        with pytest.raises(ArtifactError, match=match):
            DetectorSpec.from_dict(d)
