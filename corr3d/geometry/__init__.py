"""Cameras, icosphere viewpoints, projection, pixel centres and visibility, and rotations (OpenCV object->camera poses; pixel corner at (0, 0))."""
from corr3d.geometry.cameras import (
                                     camera_center,
                                     depth_to_xyz,
                                     intrinsics,
                                     invert_pose,
                                     pixel_rays,
                                     project,
                                     scale_intrinsics,
                                     transform_points,
                                     unproject,
                                     xyz_to_depth,
)
from corr3d.geometry.icosphere import (
                                     DEFAULT_UP,
                                     IcosphereCameras,
                                     icosphere,
                                     icosphere_directions,
                                     icosphere_poses,
                                     look_at_pose,
)
from corr3d.geometry.pixels import (
                                     containing_pixel,
                                     foreground_centres,
                                     pixel_centres,
                                     pixel_grid,
                                     pixel_grid_tensor,
                                     visible_pixels,
)
from corr3d.geometry.rotations import (
                                     relative_rotation_deg,
                                     relative_rotation_matrix_deg,
                                     rotation_angle_deg,
                                     viewing_angle_deg,
)

__all__ = ["camera_center", "depth_to_xyz", "intrinsics", "invert_pose", "pixel_grid", "pixel_rays", "project",
           "scale_intrinsics", "transform_points", "unproject", "xyz_to_depth", "DEFAULT_UP", "IcosphereCameras",
           "icosphere", "icosphere_directions", "icosphere_poses", "look_at_pose", "relative_rotation_deg",
           "relative_rotation_matrix_deg", "rotation_angle_deg", "viewing_angle_deg", "containing_pixel",
           "foreground_centres", "pixel_centres", "pixel_grid_tensor", "visible_pixels"]
