"""MVImgNet objects with truncated images (issue 14): the frames are dropped with a reason, or the object skipped."""
from pathlib import Path

import numpy as np
import pytest

from corr3d.data.mvimgnet import MVImgNetObject, MVImgNetSkip, image_problem, open_objects
from corr3d.errors import DataFileError
from tests.helpers.mvimgnet import object_points, write_object


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_jpeg_frame_is_dropped_with_a_reason(tmp_path):
    write_object(tmp_path / "obj", object_points(1))
    jpg = tmp_path / "obj" / "images" / "002.jpg"
    assert image_problem(jpg) is None
    _truncate(jpg)
    assert "truncated JPEG" in image_problem(jpg)
    obj = MVImgNetObject.open(tmp_path / "obj")
    assert obj.num_views == 4 and jpg not in obj.image_paths
    assert any("002.jpg: truncated JPEG" in note for note in obj.notes)
    assert all(obj.rgb(i).ndim == 3 for i in range(obj.num_views))


def test_object_with_too_few_readable_images_is_skipped(tmp_path):
    write_object(tmp_path / "obj", object_points(1))
    for f in range(4):
        _truncate(tmp_path / "obj" / "images" / f"{f:03d}.jpg", 0.3)
    objects, skipped = open_objects([tmp_path / "obj"])
    assert objects == [] and "4 unreadable, e.g. 000.jpg: truncated JPEG" in skipped[str(tmp_path / "obj")]
    with pytest.raises(MVImgNetSkip):
        MVImgNetObject.open(tmp_path / "obj")


def test_garbage_header_and_late_corruption_name_the_file(tmp_path):
    write_object(tmp_path / "obj", object_points(1))
    (tmp_path / "obj" / "images" / "001.jpg").write_bytes(b"not an image at all")
    obj = MVImgNetObject.open(tmp_path / "obj")
    assert obj.num_views == 4 and any("001.jpg: unreadable" in n for n in obj.notes)
    _truncate(obj.image_paths[0])  # broken after opening (e.g. a concurrent copy): a named error, not a traceback
    with pytest.raises(DataFileError) as info:
        obj.rgb(0)
    assert str(obj.image_paths[0]) in str(info.value)


# ------------------------------------------------------------------------------------- cameras vs images (issue 21)
def test_rotated_image_is_dropped_and_a_resized_one_kept(tmp_path):
    """COLMAP keypoints live at the camera resolution: a resized copy is rescaled by the evaluation, but an image with
    another aspect ratio (rotated, cropped) would misplace them: that frame is dropped with the reason."""
    from PIL import Image

    from tests.helpers.mvimgnet import HEIGHT, WIDTH

    write_object(tmp_path / "obj", object_points(1))
    images = tmp_path / "obj" / "images"
    Image.fromarray(np.zeros((WIDTH, HEIGHT, 3), np.uint8)).save(images / "001.jpg")           # rotated 90 degrees
    Image.fromarray(np.zeros((HEIGHT // 2, WIDTH // 2, 3), np.uint8)).save(images / "003.jpg")  # half size
    obj = MVImgNetObject.open(tmp_path / "obj")
    assert [p.name for p in obj.image_paths] == ["000.jpg", "002.jpg", "003.jpg", "004.jpg"]
    (note,) = obj.notes
    assert "1 frames with invalid cameras" in note and f"001.jpg: image is {HEIGHT}x{WIDTH} but its COLMAP camera 1 " \
                                                       f"is {WIDTH}x{HEIGHT}" in note


def test_invalid_camera_skips_the_object_with_the_reason(tmp_path):
    import pycolmap

    write_object(tmp_path / "obj", object_points(1))
    model = tmp_path / "obj" / "sparse" / "0"
    recon = pycolmap.Reconstruction(str(model))
    camera = recon.camera(1)
    camera.params = [0.0, 0.0, camera.params[2], camera.params[3]]   # the shared camera: focal length 0
    recon.write(str(model))
    objects, skipped = open_objects([tmp_path / "obj"])
    assert objects == []
    reason = skipped[str(tmp_path / "obj")]
    assert "5 with invalid cameras" in reason and "focal length fx=0, fy=0 (must be positive)" in reason
