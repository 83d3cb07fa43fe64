"""Studies that run avcd many times and report on the runs: their runners and reports."""
