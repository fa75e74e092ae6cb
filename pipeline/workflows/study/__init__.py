"""``civt-pipe study``: plans of experiments (the paper's tables, the views and cost trade-offs)
run end to end with our own stages, every run cached in ``DIR/runs/<id>/``."""
