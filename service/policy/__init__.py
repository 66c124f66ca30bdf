"""The pure decision math, time passed in: auto gain/depth (autotune), guidance, the per-axis search."""
