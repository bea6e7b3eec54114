"""The names of the files a run folder holds, written once for every stage and reader.

Both stages write ``allocation.json`` (what was searched or trained), its heatmap and
``metrics.json`` (the run's result, written last and atomically: a folder without it is
an unfinished run); the results table, the sweeper's return value and the run checks
read them by these names.
"""

ALLOCATION_FILE = "allocation.json"
HEATMAP_FILE = "allocation_heatmap.png"
METRICS_FILE = "metrics.json"
