"""`medplib bench` and `bench-propagate`: speed and memory measured in one process, printed as tables."""
