"""Loaders on real-format fixtures, the similarity-upsampling equivalence, letterboxing and the tracker."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import corr3d


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return corr3d.load_model("test_vit.r160_in1k", weights="random", head_layers=0, lora_blocks=0).eval()


def test_similarity_upsampling_equals_feature_upsampling(tiny_model):
    from corr3d.eval.features import sample
    from corr3d.eval.semantic import similarity_argmax, upsample_to_pixels

    torch.manual_seed(1)
    img = torch.rand(1, 3, 96, 96)
    size, inp = (96, 96), (96, 96)
    with torch.no_grad():
        fmap_t = tiny_model.dense_features(torch.rand(1, 3, 96, 96), input_size=inp)[0]
        fmap_s = tiny_model.dense_features(img, input_size=inp)[0]
    src = sample(tiny_model, fmap_s, np.array([[10.5, 20.5], [50.2, 70.9], [90.0, 3.0]]), size, inp)
    sim_a = upsample_to_pixels(tiny_model, torch.einsum("nc,chw->nhw", src, fmap_t), size, inp)
    feats = upsample_to_pixels(tiny_model, fmap_t, size, inp)           # (C, H*W): the authors' order
    sim_b = src @ feats
    assert torch.allclose(sim_a, sim_b, atol=1e-5)
    xy_a, best_a = similarity_argmax(tiny_model, src, fmap_t, size, inp, "upsample_similarity")
    xy_b, best_b = similarity_argmax(tiny_model, src, fmap_t, size, inp, "upsample_features", chunk=1000)
    assert torch.allclose(best_a, best_b, atol=1e-5)
    assert torch.equal(xy_a, xy_b)
    assert ((xy_a - 0.5) % 1 == 0).all()


def test_letterbox_maps_points():
    from corr3d.eval.semantic import letterbox

    img = np.zeros((50, 100, 3), dtype=np.uint8)
    img[10:20, 30:40] = 255
    square, scale, offset = letterbox(img, 200)
    assert square.shape == (200, 200, 3) and np.allclose(scale, [2, 2]) and np.allclose(offset, [0, 50])
    centre = np.array([35.0, 15.0]) * scale + offset                       # block centre
    assert square[int(centre[1]), int(centre[0])].mean() > 200
    assert square[:50].max() == 0 and square[150:].max() == 0              # zero padding


def test_pfpascal_and_spair_fixtures(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    from corr3d.eval.datasets import pfpascal, spair

    root = tmp_path / "PF-dataset-PASCAL"
    (root / "JPEGImages").mkdir(parents=True)
    for n in ("a", "b"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "JPEGImages" / f"{n}.jpg")
    (root / "test_pairs_pf_different_views.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\n"
        "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,8,1;10;-1,2;20;-1,5;6;7,8;9;10\n")
    (root / "Annotations" / "cat").mkdir(parents=True)
    savemat(root / "Annotations" / "cat" / "b.mat", {"bbox": np.array([[3, 4, 30, 24]])})
    pairs = pfpascal.load_pairs(root, "different")
    assert len(pairs) == 1 and pairs[0].category == "cat"                   # class 8 of the VOC list
    p = pairs[0]
    assert np.allclose(p.src_kps[:2], [[0.5, 1.5], [9.5, 19.5]])             # 1-based -> continuous
    assert p.valid.tolist() == [True, True, False]
    assert np.allclose(p.trg_bbox, [2, 3, 30, 24]) and p.src_path.exists()
    sroot = tmp_path / "SPair-71k"
    (sroot / "PairAnnotation" / "test").mkdir(parents=True)
    ann = {"src_imname": "x.jpg", "trg_imname": "y.jpg", "category": "dog", "src_kps": [[1, 2], [3, 4]],
           "trg_kps": [[5, 6], [7, 8]], "src_bndbox": [0, 0, 10, 10], "trg_bndbox": [1, 2, 21, 12],
           "viewpoint_variation": 2, "kps_ids": ["0", "3"]}
    (sroot / "PairAnnotation" / "test" / "000001-x-y:dog.json").write_text(json.dumps(ann))
    assert spair.data_present(sroot)
    (q,) = spair.load_pairs(sroot)
    assert np.allclose(q.trg_kps, [[5.5, 6.5], [7.5, 8.5]]) and q.meta["viewpoint_variation"] == 2
    assert str(q.src_path).endswith("JPEGImages/dog/x.jpg")


def test_tapvid_official_and_dinotracker_formats(tmp_path):
    from PIL import Image

    from corr3d.eval.datasets.tapvid import iter_videos, write_tapvid_pickle

    T, H, W = 6, 32, 48
    video = np.random.default_rng(0).integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    points = np.random.default_rng(1).uniform(0, 1, (3, T, 2)).astype(np.float32)
    occ = np.zeros((3, T), dtype=bool)
    occ[0, 0] = True
    write_tapvid_pickle(tmp_path / "tapvid_davis.pkl", {"v": {"video": video, "points": points, "occluded": occ}})
    (v,) = list(iter_videos(tmp_path / "tapvid_davis.pkl", "strided", 5))
    assert v.query_t.tolist() == [0, 0, 5, 5, 5]
    assert np.allclose(v.target_xy[0], points[1] * [W, H])
    assert np.allclose(v.query_points_256()[0], [0, points[1, 0, 1] * 256, points[1, 0, 0] * 256])
    # DINO-Tracker's strided format with frames on disk at a different resolution than its h/w
    frames = tmp_path / "tapvid-davis" / "0" / "video"
    frames.mkdir(parents=True)
    for i in range(T):
        Image.fromarray(video[i]).save(frames / f"{i:05d}.jpg")
    data = {"videos": [{"video_idx": 0, "h": H * 2, "w": W * 2, "query_points": {0: [[10.0, 20.0]]},
                        "target_points": {0: np.ones((1, T, 2)) * 8}, "occluded": {0: np.zeros((1, T), bool)}}]}
    with open(tmp_path / "strided.pkl", "wb") as f:
        pickle.dump(data, f)
    (d,) = list(iter_videos(tmp_path / "strided.pkl"))
    assert d.frames.shape == (T, H, W, 3) and np.allclose(d.query_xy, [[5.0, 10.0]])
    assert np.allclose(d.target_xy, 4.0) and d.query_mode == "strided"


def test_tracker_on_static_video(tiny_model):
    from corr3d.eval.tracking import DinoTracker
    from tests.helpers.config import config_section

    rng = np.random.default_rng(0)
    frame = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    frames = np.stack([frame] * 4)
    tracking = config_section("eval.tracking", stride=8, query_chunk=3)
    tracker = DinoTracker(tiny_model, frames, tracking, frame_size=None, argmax_radius=8.0, batch_size=4)
    q_xy = np.array([[20.0, 20.0], [48.0, 32.0], [70.0, 40.0], [30.0, 50.0]])
    tracks, occ, cos = tracker.track(np.array([0, 1, 2, 3]), q_xy)
    assert tracks.shape == (4, 4, 2) and occ.shape == (4, 4)
    err = np.linalg.norm(tracks - q_xy[:, None], axis=-1)
    assert err.max() < 8.0                     # within one token of the query in every (identical) frame
    assert np.allclose(cos, cos[:, :1], atol=1e-5)
    assert not occ.any()                       # identical frames: nothing occluded
    for i, t in enumerate([0, 1, 2, 3]):       # the query frame is its own anchor: cosine 1
        assert cos[i, t] == pytest.approx(1.0, abs=1e-5)
