"""Cluster jobs: render and submit SLURM / PBS scripts from the launcher group (launcher), and the watchdog that
kills a silent run and retries it (watchdog). The job templates are package data (`trainer.cluster.templates`)."""
