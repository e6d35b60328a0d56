"""`make bench`: throughput and latency measured in one run, printed with ratios between them."""
