"""Tools around training runs that are not training: the throughput benchmark (bench) and the speedrun reports
(reports)."""
