"""The job-script templates (slurm.sh, pbs.sh), installed as the package data `trainer.cluster.templates`."""
