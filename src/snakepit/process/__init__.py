"""The OS process under a worker: launching, process groups, the shutdown ladder."""
