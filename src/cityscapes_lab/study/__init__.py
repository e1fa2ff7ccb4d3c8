"""Studies: keys and paths, the results database, self-contained training tasks, approaches and the runner."""
