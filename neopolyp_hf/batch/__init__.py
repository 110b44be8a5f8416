"""Archive mode [batch]: many recorded procedures through the model on Ray Data, into four Parquet tables.

`neopolyp-batch` (cli.py) lists the procedures (inputs.py), runs each one in order in one actor that holds
the model (worker.py) and commits its rows atomically (tables.py), so a killed run resumes without a
duplicate or a missing row.
"""
