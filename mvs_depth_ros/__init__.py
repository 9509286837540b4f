"""mvs_depth_ros: dense metric depth from posed video (multi-view stereo) and stereo, for ROS 2."""
__version__ = "0.1.0"
