"""``import corr3d.geometry`` does not import torch (every render worker imports it, torch costs seconds there), and
the torch paths still work once a caller has imported torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers.tiny import REPO


def test_numpy_callers_never_import_torch():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from corr3d.geometry import IcosphereCameras, depth_to_xyz, invert_pose, pixel_centres, project, unproject
        cams = IcosphereCameras(width=32, height=24, focal=40.0, subdivisions=0)
        pose = cams.poses[0]
        uv, z = project(np.array([[0.1, -0.2, 0.05]]), cams.K, pose)
        back = unproject(uv, z, cams.K, pose)
        assert np.allclose(back, [[0.1, -0.2, 0.05]]) and np.allclose(invert_pose(invert_pose(pose)), pose)
        depth_to_xyz(np.full((24, 32), 2.0), cams.K, pose)
        pixel_centres(np.array([0]), np.array([1]))
        print("torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_tensors_still_take_the_torch_path():
    import numpy as np
    import torch

    from corr3d.geometry import invert_pose, pixel_centres, pixel_grid_tensor, project, unproject

    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([0.1, 0.2, 2.0], dtype=torch.float64)
    assert isinstance(invert_pose(pose), torch.Tensor)
    K = np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])
    points = torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float32)
    uv, z = project(points, K, pose.numpy())  # numpy K and pose follow the tensor's dtype
    assert isinstance(uv, torch.Tensor) and uv.dtype == torch.float32
    assert torch.allclose(unproject(uv, z, K, pose.numpy()), points, atol=1e-5)
    assert pixel_centres(torch.tensor([0]), torch.tensor([1])).tolist() == [[1.5, 0.5]]
    assert pixel_grid_tensor((2, 2)).shape == (4, 2)
