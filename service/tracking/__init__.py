"""Camera tracking: RealSense (live or a .db3 recording) -> probe pose in the patient frame.

``markers`` finds the coloured spheres and stickers, ``pose`` fits the probe, ``calibration`` makes
the camera-to-patient transform, ``track`` keeps timestamped poses and interpolates them at probe
frame times, ``camera`` owns the librealsense pipeline and its thread.
"""
