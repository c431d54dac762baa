"""Launching on clusters: ``corr3d.launch.slurm`` submits training, evaluation and rendering with submitit."""
