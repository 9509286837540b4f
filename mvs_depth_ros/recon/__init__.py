"""Dense reconstruction from a stream of posed depth maps.

* :mod:`.consistency` — MVSNet-style multi-view geometric consistency filtering (torch, vectorised);
* :mod:`.tsdf` — TSDF fusion with open3d's ``VoxelBlockGrid`` (CPU or CUDA), cloud / mesh extraction, PLY;
* :mod:`.metrics` — accuracy / completeness / precision / recall / F-score against a reference cloud;
* :mod:`.render` — a headless z-buffered splat renderer for pictures of clouds and meshes (numpy).

No ROS here: ``mvs-depth reconstruct`` and the ``map_node`` both call these functions.
open3d is imported lazily by :mod:`.tsdf` and :mod:`.metrics` (an optional dependency:
``pip install mvs_depth_ros[reconstruction]``).
"""
