"""The train step, its state, losses, sharding, preemption, metric writers and FLOPs."""
