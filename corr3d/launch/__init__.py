"""Launching, above the library (it imports the stages, never the reverse): ``corr3d.launch.slurm`` submits training,
evaluation and rendering with submitit; ``corr3d.launch.sweep`` runs grid sweeps locally or as SLURM arrays."""
